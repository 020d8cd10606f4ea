"""Natural-language captions built from what was rendered, with varied templates and synonyms.

The structured truth (genre, bpm, key, mode, instruments, mood, dynamics) is stored next to the caption, so any
word here can be checked against it later (text-adherence metrics).
"""
from __future__ import annotations

import re

import numpy as np

from musiclm_jax.data.synthcaps.theory import pitch_class, tonic_name

# mood category -> words. The category follows from mode and tempo (see `mood_of`), never from chance.
MOOD_WORDS = {
    "happy": ["happy", "cheerful", "bright", "joyful", "upbeat"],
    "calm": ["calm", "peaceful", "relaxed", "gentle", "warm"],
    "tense": ["tense", "dramatic", "driving", "urgent", "restless"],
    "sad": ["sad", "melancholic", "somber", "wistful", "mournful"],
}
DYNAMICS_WORDS = {
    "soft": ["soft", "quiet", "delicate", "hushed"],
    "medium": ["moderately loud", "balanced", "medium-level", "even"],
    "loud": ["loud", "powerful", "forceful", "punchy"],
}
# Loudness each dynamics level is rendered at (RMS dBFS) and the velocity scale applied to the MIDI.
DYNAMICS_LEVELS = {"soft": (-28.0, 0.6), "medium": (-21.0, 0.85), "loud": (-15.0, 1.0)}


def tempo_word(bpm: float) -> str:
    if bpm < 76:
        return "slow"
    if bpm < 108:
        return "moderate"
    if bpm < 140:
        return "fast"
    return "very fast"


TEMPO_SYNONYMS = {"slow": ["slow", "unhurried", "leisurely"], "moderate": ["moderate", "medium", "steady"],
                  "fast": ["fast", "lively", "brisk"], "very fast": ["very fast", "racing", "breakneck"]}


# How captions (SynthCaps' and most people's) state tempo and key: "128 BPM" / "beats per minute",
# "in (the key of) F# minor".
BPM_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*(?:bpm\b|beats per minute)", re.IGNORECASE)
KEY_PATTERN = re.compile(r"\bin (?:the key of )?([A-G][#b]?)[ -](major|minor)\b", re.IGNORECASE)


def mood_of(mode: str, bpm: float) -> str:
    fast = bpm >= 100
    if mode == "major":
        return "happy" if fast else "calm"
    return "tense" if fast else "sad"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


TEMPLATES = [
    "{A_mood} {genre} piece in {key}, played by {instruments}, at a {tempo} tempo of {bpm} BPM. The dynamics are {dyn}.",
    "This is {a_genre} track with {instruments}. It is in {key} and moves at {bpm} BPM ({tempo} tempo); the mood is {mood} and the playing is {dyn}.",
    "{Instruments} play {a_mood} {genre} tune in {key} at {bpm} BPM. {Dyn} dynamics, {tempo} tempo.",
    "{genre_cap} at {bpm} beats per minute ({tempo} tempo) in {key}. Instrumentation: {instruments}. It feels {mood} and sounds {dyn}.",
    "A {dyn} and {mood} {genre} recording featuring {instruments}, in {key}, {tempo} tempo around {bpm} BPM.",
    "{genre_cap} music: {instruments} in {key}. The tempo is {tempo} ({bpm} BPM) and the mood {mood}; overall it is {dyn}.",
]


def make_caption(rng: np.random.Generator, genre: str, bpm: float, tonic: str, mode: str, instruments: list[str],
                 mood: str, dynamics: str) -> str:
    """One caption; `rng` picks the template and synonyms, the facts are fixed by the arguments."""
    tempo = str(rng.choice(TEMPO_SYNONYMS[tempo_word(bpm)]))
    mood_w = str(rng.choice(MOOD_WORDS[mood]))
    dyn = str(rng.choice(DYNAMICS_WORDS[dynamics]))
    key = f"{tonic} {mode}" if rng.random() < 0.5 else f"the key of {tonic} {mode}"
    order = list(rng.permutation(len(instruments)))
    inst = _join([instruments[i] for i in order])
    fields = dict(mood=mood_w, genre=genre, key=key, instruments=inst, tempo=tempo, bpm=int(round(bpm)), dyn=dyn,
                  a_genre=f"{_article(genre)} {genre}", a_mood=f"{_article(mood_w)} {mood_w}")
    fields.update(A_mood=fields["a_mood"].capitalize(), Instruments=inst[:1].upper() + inst[1:],
                  Dyn=dyn.capitalize(),
                  genre_cap=genre[:1].upper() + genre[1:])
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(**fields)


def _swap_word(text: str, words: dict[str, list[str]], old: str, new: str) -> str:
    """Replaces the first of `words[old]` found in `text` by the word at the same index of `words[new]`."""
    if old == new:
        return text
    for i in sorted(range(len(words[old])), key=lambda i: -len(words[old][i])):  # "very fast" before "fast"
        m = re.search(rf"\b{re.escape(words[old][i])}\b", text, re.IGNORECASE)
        if m:
            repl = words[new][i % len(words[new])]
            repl = repl[:1].upper() + repl[1:] if m.group(0)[:1].isupper() else repl
            return text[:m.start()] + repl + text[m.end():]
    return text


def restate(caption: str, *, semitones: int = 0, bpm: float | None = None, mode: str | None = None) -> str:
    """The caption of the same clip played `semitones` higher, at `bpm`, or in the other `mode`: the stated key and
    BPM and the tempo and mood words that follow from them are rewritten; everything else is kept, and a fact the
    caption does not state stays unstated. Used by MuLan's transposition augmentation and its swap tests."""
    k, b = KEY_PATTERN.search(caption), BPM_PATTERN.search(caption)
    old_mode = k.group(2).lower() if k else None
    old_bpm = float(b.group(1)) if b else None
    new_mode, new_bpm = mode or old_mode, old_bpm if bpm is None else bpm
    # Rewrite the later span first so the earlier one's offsets stay valid.
    edits = []
    if k and (semitones or new_mode != old_mode):
        tonic = tonic_name(pitch_class(k.group(1)) + semitones, new_mode)
        edits.append((k.start(1), k.end(2), f"{tonic}{caption[k.end(1):k.start(2)]}{new_mode}"))
    if b and new_bpm != old_bpm:
        edits.append((b.start(1), b.end(1), str(int(round(new_bpm)))))
    out = caption
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    if b and new_bpm != old_bpm:
        out = _swap_word(out, TEMPO_SYNONYMS, tempo_word(old_bpm), tempo_word(new_bpm))
    if old_mode and old_bpm is not None:
        out = _swap_word(out, MOOD_WORDS, mood_of(old_mode, old_bpm), mood_of(new_mode, new_bpm))
    return out
