"""The tempo a prompt asks for, for stage LMs with tempo conditioning (lm/stages.py TokenSizes.beat_phases).

    bpm_from_text("a funk groove at 96 bpm")            -> 96.0
    bpm_from_text("tempo: 140, in the style of ska")    -> 140.0
    bpm_from_text("an allegro string quartet")          -> 132.0 (the middle of the marking's usual range)
    bpm_from_text("a calm piano piece")                 -> None  (no tempo stated: the model picks one)

Only what a prompt states is read: a number with a BPM unit or after "tempo", or a classical tempo marking. MuLan's
text embedding hardly tells 100 from 130 BPM (issue 16), so a stated number is taken literally instead.
"""
from __future__ import annotations

import re

BPM_RANGE = (30.0, 300.0)   # numbers outside it are not read as tempos
_NUMBER = r"(\d{2,3}(?:\.\d+)?)"
_PATTERNS = [
    re.compile(_NUMBER + r"\s*(?:-\s*)?(?:bpm\b|b\.p\.m\.?|beats?\s*(?:per|a|/)\s*min(?:ute)?\b)", re.IGNORECASE),
    re.compile(r"\b(?:bpm|tempo|metronome)\s*(?:of|is|=|:|at|around|about|near|~)?\s*(?:about|around|roughly|~)?\s*"
               + _NUMBER + r"\b", re.IGNORECASE),
]
# Classical tempo markings -> the middle of their usual metronome range (most specific first).
MARKINGS = {"prestissimo": 200.0, "presto": 180.0, "vivace": 160.0, "allegro": 132.0, "allegretto": 112.0,
            "moderato": 108.0, "andantino": 92.0, "andante": 84.0, "adagietto": 72.0, "adagio": 68.0,
            "larghetto": 63.0, "lento": 55.0, "largo": 50.0, "grave": 40.0}
_MARKING = re.compile(r"\b(" + "|".join(sorted(MARKINGS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def bpm_from_text(text: str) -> float | None:
    """The tempo `text` states in BPM, or None when it states none."""
    if not isinstance(text, str):
        raise ValueError(f"bpm_from_text takes a caption string, got {type(text).__name__}")
    for pattern in _PATTERNS:
        for m in pattern.finditer(text):
            bpm = float(m.group(1))
            if BPM_RANGE[0] <= bpm <= BPM_RANGE[1]:
                return bpm
    m = _MARKING.search(text)
    return MARKINGS[m.group(1).lower()] if m else None


def check_bpm(bpm, batch: int, where: str = "bpm") -> list[float | None]:
    """A scalar or one value per row (None: unknown) -> a list of `batch` floats or None; one-line errors."""
    values = list(bpm) if isinstance(bpm, (list, tuple)) else [bpm] * batch
    if len(values) != batch:
        raise ValueError(f"{where}: {len(values)} values for {batch} prompts: give one, or one per prompt")
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a number of beats per minute, got {v!r}") from None
        if not BPM_RANGE[0] <= v <= BPM_RANGE[1]:
            raise ValueError(f"{where} must be in [{BPM_RANGE[0]:g}, {BPM_RANGE[1]:g}] BPM, got {v:g}")
        out.append(v)
    return out
