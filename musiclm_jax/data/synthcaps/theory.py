"""Keys, scales and chords: just enough theory to write progressions and melodies whose key we know."""
from __future__ import annotations

SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# Conventional tonic spellings (fewest accidentals) per mode.
MAJOR_TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
FLAT_KEYS = {("major", n) for n in ("F", "Bb", "Eb", "Ab", "Db")} | {("minor", n) for n in ("D", "G", "C", "F", "Bb", "Eb")}

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor; V is raised to major in progressions (harmonic minor)

# Roman-numeral progressions: (semitones above tonic, quality) per bar. All start on the tonic so the key is clear.
PROGRESSIONS = {
    "major": [
        [(0, ""), (7, ""), (9, "m"), (5, "")],       # I V vi IV
        [(0, ""), (5, ""), (7, "7"), (0, "")],       # I IV V7 I
        [(0, ""), (9, "m"), (5, ""), (7, "7")],      # I vi IV V7
        [(0, ""), (5, ""), (0, ""), (7, "7")],       # I IV I V7
        [(0, "M7"), (2, "m7"), (7, "7"), (0, "M7")],  # Imaj7 ii7 V7 Imaj7
        [(0, ""), (4, "m"), (5, ""), (7, "")],       # I iii IV V
    ],
    "minor": [
        [(0, "m"), (5, "m"), (7, "7"), (0, "m")],    # i iv V7 i
        [(0, "m"), (8, ""), (3, ""), (10, "")],      # i VI III VII
        [(0, "m"), (8, ""), (10, ""), (0, "m")],     # i VI VII i
        [(0, "m"), (5, "m"), (10, ""), (7, "7")],    # i iv VII V7
        [(0, "m7"), (5, "m7"), (7, "7"), (0, "m7")],  # i7 iv7 V7 i7
    ],
}
# Chord tones (semitones above the chord root) per quality.
CHORD_TONES = {"": (0, 4, 7), "m": (0, 3, 7), "7": (0, 4, 7, 10), "M7": (0, 4, 7, 11), "m7": (0, 3, 7, 10)}


def pitch_class(name: str) -> int:
    """'C#' / 'Db' / 'c' -> 1. ValueError for anything else."""
    n = name.strip()
    key = n[:1].upper() + n[1:].replace("-", "b")
    if key in SHARP_NAMES:
        return SHARP_NAMES.index(key)
    if key in FLAT_NAMES:
        return FLAT_NAMES.index(key)
    raise ValueError(f"unknown pitch name {name!r}; use e.g. C, F#, Bb")


def tonic_name(pc: int, mode: str) -> str:
    return (MAJOR_TONICS if mode == "major" else MINOR_TONICS)[pc % 12]


def note_name(pc: int, tonic: str, mode: str) -> str:
    return (FLAT_NAMES if (mode, tonic) in FLAT_KEYS else SHARP_NAMES)[pc % 12]


def scale_pcs(tonic_pc: int, mode: str) -> list[int]:
    return [(tonic_pc + s) % 12 for s in (MAJOR_SCALE if mode == "major" else MINOR_SCALE)]


def chord_symbol(tonic_pc: int, tonic: str, mode: str, degree: int, quality: str) -> str:
    """mma chord name, e.g. 'Bbm7'."""
    return note_name(tonic_pc + degree, tonic, mode) + quality


def chord_pcs(tonic_pc: int, degree: int, quality: str) -> list[int]:
    return [(tonic_pc + degree + t) % 12 for t in CHORD_TONES[quality]]


def mido_key(tonic: str, mode: str) -> str:
    """Key name in mido's key_signature format ('Bb', 'F#m')."""
    return tonic + ("m" if mode == "minor" else "")


# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def estimate_key(histogram) -> tuple[int, str]:
    """Krumhansl-Schmuckler: the (tonic pitch class, mode) whose profile best correlates with a pitch-class
    histogram (duration-weighted)."""
    import numpy as np

    h = np.asarray(histogram, dtype=np.float64)
    if h.shape != (12,) or h.sum() <= 0:
        raise ValueError("estimate_key needs a non-empty 12-bin pitch-class histogram")
    best = (-2.0, 0, "major")
    for mode, prof in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for t in range(12):
            r = float(np.corrcoef(h, np.roll(prof, t))[0, 1])
            if r > best[0]:
                best = (r, t, mode)
    return best[1], best[2]
