"""Evaluation inputs: prompts files (JSONL) -> items with loaded audio, truth fields and tokens; SynthCaps export.

A prompts file is JSONL. Rows written by `musiclm-jax infer` have at least "id", "prompt", "wav" (and maybe
"tokens"); hand-written rows need "wav" and "prompt". Optional truth fields: "bpm", "key", "mode", "instrument"
(or "lead_instrument"), "genre", and "reference" (path of the real clip the prompt describes). Relative paths are
resolved against the audio dir, then the prompts file's folder. Bad rows and unreadable audio are skipped, counted
and named (`Skipped`), never fatal.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("musiclm_jax.eval")

TRUTH_FIELDS = ("bpm", "key", "mode", "instrument", "genre")
PROMPTS_FILE = "prompts.jsonl"
INFER_PROMPTS_FILE = "infer_prompts.jsonl"   # {"id", "prompt", "duration_s"} only: what `musiclm-jax infer` reads


@dataclass
class Item:
    prompt: str
    wave: np.ndarray
    sample_rate: int
    id: str = ""
    path: str = ""
    truth: dict = field(default_factory=dict)
    reference: str | None = None         # path of the paired real clip
    tokens: np.ndarray | None = None     # semantic tokens of the generated audio (memorization)


@dataclass
class Skipped:
    items: list = field(default_factory=list)   # [(name, reason)]

    def add(self, name: str, reason: str) -> None:
        self.items.append((str(name), str(reason)))
        log.warning("eval: skipped %s: %s", name, reason)

    def __len__(self) -> int:
        return len(self.items)

    def to_json(self) -> dict:
        return {"count": len(self.items), "items": [{"item": n, "reason": r} for n, r in self.items]}


def _resolve(path: str, *bases: str | None) -> str:
    path = os.path.expanduser(str(path))
    if os.path.isabs(path):
        return path
    for base in bases:
        if base and os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return os.path.join(next((b for b in bases if b), "."), path)


def _truth(row: dict) -> dict:
    t = {}
    for k in TRUTH_FIELDS:
        v = row.get(k, row.get("lead_instrument") if k == "instrument" else None)
        if v not in (None, ""):
            t[k] = float(v) if k == "bpm" else str(v)
    return t


def load_tokens(value, *bases: str | None) -> np.ndarray:
    """Semantic tokens from a row's "tokens": a list of ints, a path (.npy / .npz ["semantic" or first array] /
    .json / .jsonl with "tokens"), or a dict whose "semantic" entry is one of those."""
    if isinstance(value, dict):
        value = value.get("semantic", next(iter(value.values()), None))
    if isinstance(value, (list, tuple)):
        return np.asarray(value, np.int64).reshape(-1)
    path = _resolve(str(value), *bases)
    if path.endswith(".npy"):
        return np.load(path).astype(np.int64).reshape(-1)
    if path.endswith(".npz"):
        z = np.load(path)
        return z["semantic" if "semantic" in z else z.files[0]].astype(np.int64).reshape(-1)
    with open(path) as f:
        text = f.read().strip()
    row = json.loads(text.splitlines()[0])
    return np.asarray(row["tokens"] if isinstance(row, dict) else row, np.int64).reshape(-1)


def read_rows(prompts_path: str) -> tuple[list[dict], Skipped]:
    """JSON rows of a prompts file; lines that are not JSON objects or have no prompt are skipped."""
    if not os.path.isfile(prompts_path):
        raise FileNotFoundError(f"prompts file {prompts_path} does not exist (JSONL of {{\"wav\", \"prompt\"}} rows)")
    rows, skipped = [], Skipped()
    with open(prompts_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            name = f"{os.path.basename(prompts_path)}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                skipped.add(name, f"not JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                skipped.add(name, "not a JSON object")
                continue
            prompt = row.get("prompt", row.get("caption"))
            if not isinstance(prompt, str) or not prompt.strip():
                skipped.add(row.get("id", name), "no prompt")
                continue
            row["_line"] = name
            rows.append(row)
    return rows, skipped


def load_items(prompts_path: str, audio_dir: str | None = None, skipped: Skipped | None = None
               ) -> tuple[list[Item], Skipped]:
    """Rows -> `Item`s with audio loaded at its own rate. Missing / corrupt / empty / silent-free-of-samples audio
    and unreadable tokens are skipped and named."""
    from musiclm_jax.audio.io import AudioLoadError, load_audio

    rows, bad = read_rows(prompts_path)
    skipped = skipped or Skipped()
    skipped.items.extend(bad.items)
    base = os.path.dirname(os.path.abspath(prompts_path))
    items = []
    for row in rows:
        name = str(row.get("id") or row["_line"])
        wav = row.get("wav", row.get("audio", row.get("path")))
        if not wav:
            guess = os.path.join(audio_dir or base, f"{row.get('id')}.wav")
            if row.get("id") is None or not os.path.exists(guess):
                skipped.add(name, "no wav path")
                continue
            wav = guess
        path = _resolve(wav, audio_dir, base)
        try:
            wave, sr = load_audio(path)
        except AudioLoadError as e:
            skipped.add(name, str(e))
            continue
        if wave.size == 0:
            skipped.add(name, f"{path}: no samples")
            continue
        tokens = None
        if row.get("tokens") is not None:
            try:
                tokens = load_tokens(row["tokens"], audio_dir, base)
            except (OSError, ValueError, KeyError, IndexError) as e:
                log.warning("eval: %s: tokens unreadable (%s); memorization skips it", name, e)
        ref = row.get("reference")
        items.append(Item(prompt=str(row.get("prompt", row.get("caption"))).strip(), wave=wave, sample_rate=sr,
                          id=str(row.get("id", "")), path=path, truth=_truth(row),
                          reference=_resolve(ref, audio_dir, base) if ref else None, tokens=tokens))
    return items, skipped


def load_training_tokens(path: str) -> list[np.ndarray]:
    """A training-set semantic token collection: a .npy ([N, T] or object array of sequences), a .npz (one
    sequence per array), a .jsonl of {"tokens": [...]} rows (`musiclm-jax semantic tokenize` writes those), or a
    folder of .npy files."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        return [np.load(os.path.join(path, f)).astype(np.int64).reshape(-1)
                for f in sorted(os.listdir(path)) if f.endswith(".npy")]
    if path.endswith(".npy"):
        a = np.load(path, allow_pickle=False)
        return [np.asarray(r, np.int64).reshape(-1) for r in (a if a.ndim > 1 else [a])]
    if path.endswith(".npz"):
        z = np.load(path)
        return [z[k].astype(np.int64).reshape(-1) for k in z.files]
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append(np.asarray(row.get("tokens", row.get("semantic")) if isinstance(row, dict) else row,
                                      np.int64).reshape(-1))
    if not out:
        raise ValueError(f"{path}: no training token sequences found")
    return out


def export_synthcaps(data_dir: str | None, config: str, split: str, out_dir: str, limit: int | None = None) -> dict:
    """Writes a built SynthCaps split as a reference dir: one wav per clip plus prompts.jsonl rows
    {"id", "prompt", "wav", "reference", "bpm", "key", "mode", "instrument", "genre", "heldout"}, where
    "reference" is the clip itself, and infer_prompts.jsonl rows {"id", "prompt", "duration_s"} for
    `musiclm-jax infer` (same ids, so its results pair with these clips and inherit their truth)."""
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips

    clips = synthcaps_clips(split=split, config=config, data_dir=data_dir and os.path.expanduser(data_dir),
                            limit=limit)
    if not clips:
        raise ValueError(f"synthcaps/{config} split {split!r} has no clips")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, PROMPTS_FILE), "w") as f, \
            open(os.path.join(out_dir, INFER_PROMPTS_FILE), "w") as g:
        for i, c in enumerate(clips):
            cid = f"{split}_{i:05d}"
            wav = f"{cid}.wav"
            write_wav(os.path.join(out_dir, wav), c["audio"], c["sample_rate"])
            row = {"id": cid, "prompt": c["caption"], "wav": wav, "reference": wav, "bpm": float(c["bpm"]),
                   "key": c.get("key"), "mode": c.get("mode"), "instrument": c.get("lead_instrument"),
                   "genre": c.get("genre"), "heldout": bool(c.get("heldout", False)), "score_id": c.get("score_id")}
            f.write(json.dumps(row) + "\n")
            seconds = round(len(c["audio"]) / c["sample_rate"], 3)
            g.write(json.dumps({"id": cid, "prompt": c["caption"], "duration_s": seconds}) + "\n")
    return {"clips": len(clips), "out_dir": out_dir, "prompts": os.path.join(out_dir, PROMPTS_FILE),
            "infer_prompts": os.path.join(out_dir, INFER_PROMPTS_FILE)}
