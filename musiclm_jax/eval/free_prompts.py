"""Tempo and key adherence on prompts in wordings unlike SynthCaps' caption templates (user-style prompts).

    python -m musiclm_jax.eval.free_prompts out/eval/free_prompts.json weights/musiclm [MODEL_DIR ...]

`prompts(n, seed)` writes n prompts from eight phrasings ("{tonic} {mode} | {bpm} BPM | {genre} with {lead}", "i
want a ... tune, ... around 127 beats per minute, written in B-flat minor", ...), SynthCaps' genres and lead
instruments, any BPM in 75-149 (often outside the genre's usual range) and key spellings such as "F sharp", "E-flat".
Each model generates them (8 s, seed i for prompt i, its own sampling settings); the truth is what each prompt
states (`tempo.bpm_from_text`, `musical_key.key_from_text`), scored with the eval suite's estimators (tempo within
5 %, octave-tolerant; key = tonic and mode) with 95 % bootstrap intervals, and per prompt in the JSON.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from musiclm_jax.eval import metrics
from musiclm_jax.musical_key import key_from_text, key_index, key_name
from musiclm_jax.tempo import bpm_from_text

GENRES = ["rock", "bossa nova", "funk", "blues", "jazz", "folk", "ska", "tango", "pop", "country", "samba", "trance"]
LEADS = ["piano", "trumpet", "flute", "violin", "clarinet", "alto sax", "nylon guitar", "vibraphone", "synth lead"]
TONICS = ["C", "C#", "D", "E-flat", "E", "F", "F sharp", "G", "A-flat", "A", "B-flat", "B"]
FORMS = [
    "{Genre} jam led by {lead}. {bpm} bpm, key of {tonic} {mode}.",
    "{tonic} {mode} | {bpm} BPM | {genre} with {lead}",
    "i want a {genre} tune, {lead} on top, around {bpm} beats per minute, written in {tonic} {mode}",
    "Background music for a video: {genre}, {lead} melody, tempo {bpm}, {tonic} {mode}.",
    "A {genre} groove in {tonic} {mode} featuring a {lead} solo at {bpm} BPM",
    "{lead} and band playing {genre}; {tonic} {mode}; {bpm} bpm",
    "Short {genre} loop, {tonic} {mode} key, {bpm} BPM, lead: {lead}",
    "{Genre} piece at a tempo of {bpm}, in {tonic} {mode}, the {lead} carries the tune.",
]


def prompts(n: int = 32, seed: int = 2026) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        genre = str(rng.choice(GENRES))
        fields = dict(genre=genre, Genre=genre.capitalize(), lead=str(rng.choice(LEADS)),
                      bpm=int(rng.integers(75, 150)), tonic=str(rng.choice(TONICS)),
                      mode=str(rng.choice(["major", "minor"])))
        out.append(FORMS[i % len(FORMS)].format(**fields))
    return out


def score(lm, texts: list[str], seconds: float = 8.0, batch_size: int = 16) -> dict:
    """Generates `texts` with `lm` (a MusicLM) and scores tempo, key and mode against what each states."""
    truth = [(bpm_from_text(t), key_from_text(t)) for t in texts]
    missing = [t for t, (b, k) in zip(texts, truth) if b is None or k is None]
    if missing:
        raise ValueError(f"every prompt must state a BPM and a key; these do not: {missing}")
    waves = np.concatenate([lm.generate(texts[i:i + batch_size], seconds, progress=False,
                                        seed=list(range(i, min(i + batch_size, len(texts)))))
                            for i in range(0, len(texts), batch_size)])
    sr = lm.sample_rate
    bpm = [metrics.estimate_tempo(w, sr) for w in waves]
    keys = [metrics.estimate_key(w, sr) for w in waves]
    stated = [key_name(k).split() for _, k in truth]
    hits = {"tempo": [metrics.tempo_correct(e, b, octave=True) for e, (b, _) in zip(bpm, truth)],
            "key": [bool(et) and key_index(et, em) == key_index(t, m) for (et, em), (t, m) in zip(keys, stated)],
            "mode": [em == m for (_, em), (_, m) in zip(keys, stated)]}
    row = {name: [float(np.mean(v)), *metrics.bootstrap_interval(np.asarray(v, float))] for name, v in hits.items()}
    row["pulse_clarity"] = float(np.mean([metrics.pulse_clarity(w, sr) for w in waves]))
    row["tonal_clarity"] = float(np.mean([metrics.tonal_clarity(w, sr) for w in waves]))
    row["per_prompt"] = {**{k: [bool(x) for x in v] for k, v in hits.items()}, "bpm_estimate": bpm,
                         "key_estimate": [" ".join(k) for k in keys]}
    return row


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        raise SystemExit("usage: python -m musiclm_jax.eval.free_prompts OUT_JSON MODEL_DIR [MODEL_DIR ...]")
    from musiclm_jax.pipeline import MusicLM

    out_path, dirs = argv[0], argv[1:]
    texts = prompts()
    report = {"prompts": texts, "seconds": 8.0, "models": {}}
    for d in dirs:
        row = score(MusicLM.from_pretrained(d), texts)
        report["models"][d] = row
        print(d, json.dumps({k: v for k, v in row.items() if k != "per_prompt"}), flush=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
