"""The key a prompt asks for, for stage LMs with key conditioning (lm/stages.py TokenSizes.key_stages).

    key_from_text("a bossa nova in F# minor at 120 BPM")   -> 13  (key_index("F#", "minor"))
    key_from_text("E-flat major, slow and warm")            -> 6
    key_from_text("a calm piano piece")                     -> None (no key stated: the model picks one)
    key_name(13)                                            -> "F# minor"

A key index is the tonic's pitch class x 2 + 1 for minor (24 keys). Only a key spelled out is read: an upper-case
tonic letter (so "a minor role" is not A minor), an optional sharp or flat, then "major"/"minor" (or "maj"/"min").
MuLan's text embedding tells keys apart poorly (issue 16), so a stated key is taken literally, like a stated tempo.
"""
from __future__ import annotations

import re

NUM_KEYS = 24
_PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ACCIDENTAL = {"#": 1, "♯": 1, "sharp": 1, "b": -1, "♭": -1, "flat": -1, "": 0}
_KEY = re.compile(r"(?<![A-Za-z])([A-G])(?:\s*|-)(#|♯|b|♭|(?:-|\s)?sharp|(?:-|\s)?flat)?[\s-]*"
                  r"(major|minor|maj|min)\b", re.IGNORECASE)


def key_index(tonic: str, mode: str) -> int:
    """("F#", "minor") -> 13. Tonic: a letter with an optional #/b; mode: major or minor."""
    m = re.fullmatch(r"\s*([A-Ga-g])\s*(#|♯|b|♭)?\s*", str(tonic))
    if not m or str(mode).lower() not in ("major", "minor"):
        raise ValueError(f"a key is a tonic (A-G with an optional # or b) and major or minor, got {tonic!r} {mode!r}")
    pitch = (_PITCH[m.group(1).upper()] + _ACCIDENTAL[m.group(2) or ""]) % 12
    return 2 * pitch + (str(mode).lower() == "minor")


def key_name(index: int) -> str:
    """13 -> "F# minor"."""
    if not 0 <= int(index) < NUM_KEYS:
        raise ValueError(f"a key index is in [0, {NUM_KEYS}), got {index}")
    return f"{_NAMES[int(index) // 2]} {'minor' if int(index) % 2 else 'major'}"


def _index(m: re.Match) -> int:
    letter, accidental, mode = m.groups()
    accidental = re.sub(r"[\s-]", "", accidental or "").lower()
    return 2 * ((_PITCH[letter.upper()] + _ACCIDENTAL[accidental]) % 12) + mode.lower().startswith("min")


def key_from_text(text: str) -> int | None:
    """The key `text` states (key index), or None when it states none."""
    if not isinstance(text, str):
        raise ValueError(f"key_from_text takes a caption string, got {type(text).__name__}")
    for m in _KEY.finditer(text):
        if m.group(1).isupper():
            return _index(m)
    return None


def check_key(key, batch: int, where: str = "key") -> list[int | None]:
    """A key (index or name like "F# minor"; None: unknown) or one per row -> a list of `batch` indices or None."""
    values = list(key) if isinstance(key, (list, tuple)) else [key] * batch
    if len(values) != batch:
        raise ValueError(f"{where}: {len(values)} values for {batch} prompts: give one, or one per prompt")
    out = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, str):
            m = _KEY.fullmatch(v.strip())
            if m is None:
                raise ValueError(f"{where} must name a key like 'F# minor' or 'Eb major', got {v!r}")
            out.append(_index(m))
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < NUM_KEYS:
            out.append(v)
        else:
            raise ValueError(f"{where} must be a key name like 'F# minor' or an index in [0, {NUM_KEYS}), got {v!r}")
    return out
