"""General MIDI programs per musical role, their caption names, and the soundfonts SynthCaps renders with."""
from __future__ import annotations

import os

# program number (0-based GM) -> name used in captions. Grouped by role so a draw per role sounds plausible.
LEAD = {
    0: "piano", 11: "vibraphone", 12: "marimba", 21: "accordion", 22: "harmonica", 24: "nylon-string guitar",
    27: "clean electric guitar", 40: "violin", 56: "trumpet", 57: "trombone", 64: "soprano saxophone",
    65: "alto saxophone", 66: "tenor saxophone", 68: "oboe", 71: "clarinet", 73: "flute", 74: "recorder",
    75: "pan flute", 80: "square-wave synth lead", 81: "sawtooth synth lead",
}
HARMONY = {
    0: "grand piano", 4: "electric piano", 6: "harpsichord", 16: "drawbar organ", 19: "church organ",
    21: "accordion", 24: "acoustic guitar", 25: "steel-string guitar", 27: "electric guitar", 48: "string ensemble",
    49: "slow strings", 50: "synth strings", 52: "choir", 88: "new age pad", 89: "warm pad", 90: "polysynth pad",
}
BASS = {
    32: "upright bass", 33: "electric bass", 34: "picked bass", 35: "fretless bass", 36: "slap bass",
    38: "synth bass", 43: "contrabass", 58: "tuba",
}
# Drum kits live on channel 10, program = kit number. Only the standard kit exists in every GM soundfont.
DRUM_KITS_FULL = {0: "drums", 8: "room drum kit", 16: "power drum kit", 24: "electronic drums", 32: "jazz drum kit",
                  40: "brush drums"}
DRUM_KITS_BASIC = {0: "drums"}

ROLES = ("lead", "harmony", "bass", "drums")

SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3")
# name -> (file, has all GM drum kits). MuseScore's .sf3 takes ~7 s to load per render, so it is opt-in.
SOUNDFONTS = {
    "fluidr3": ("FluidR3_GM.sf2", True),
    "timgm6mb": ("TimGM6mb.sf2", False),
    "musescore": ("MuseScore_General_Full.sf3", True),
}
DEFAULT_SOUNDFONTS = ("fluidr3", "timgm6mb")


def soundfont_path(name: str) -> str:
    """Absolute path of a soundfont by short name; ValueError saying how to install it if absent."""
    if name not in SOUNDFONTS:
        raise ValueError(f"unknown soundfont {name!r}; choose one of {sorted(SOUNDFONTS)}")
    fname = SOUNDFONTS[name][0]
    for d in SOUNDFONT_DIRS:
        path = os.path.join(d, fname)
        if os.path.exists(path):
            return path
    raise ValueError(f"soundfont {fname} not found in {SOUNDFONT_DIRS}; run `make apt` (Debian packages "
                     "fluid-soundfont-gm, timgm6mb-soundfont, musescore-general-soundfont)")


def drum_kits(soundfont: str) -> dict[int, str]:
    return DRUM_KITS_FULL if SOUNDFONTS[soundfont][1] else DRUM_KITS_BASIC


def table(role: str) -> dict[int, str]:
    return {"lead": LEAD, "harmony": HARMONY, "bass": BASS}[role]
