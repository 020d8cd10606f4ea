"""Melody training data: a bank of pre-rendered renditions and resumable triplet batches from it.

Rendering a line takes FluidSynth ~0.1 s per sound, too slow to do per training batch on a CPU, so the lead lines
of a SynthCaps split are rendered once (`build_bank`: every line in every timbre of data/synthcaps/melody.py, the
clip's own full arrangement as one more "timbre" `mix` when the clips carry their audio, plus two transposed
copies) into `<bank_dir>/<split>.npz` (int16 audio, no pickle). `melody_triplets` (the trainer's
dataset function) then draws, per row: a line (each once per epoch), two different timbres of it as anchor and
positive, and as negative a transposed copy (`transposed_fraction` of rows) or another line, all cropped at the
same offset so they cover the same notes. Batch n depends only on (seed, split, shard, n).
"""
from __future__ import annotations

import json
import logging
import os

import gin
import numpy as np

from musiclm_jax.data.synthcaps import melody as renditions
from musiclm_jax.train.data import ResumableBatches, split_id

log = logging.getLogger(__name__)
TRANSPOSITIONS = (-3, 4)   # the bank's negative copies: a minor third down, a major third up ...
TRANSPOSED_TIMBRES = ("whistle", "recorder")  # ... each in its own sound
MIX = "mix"   # the clip's full arrangement: what the melody tokens of a training clip are computed from


def build_bank(clips: list[dict], bank_dir: str, split: str, *, sample_rate: int = 16000, seconds: float = 4.0,
               seed: int = 0) -> dict:
    """Renders the lead lines of `clips` (SynthCaps clip dicts with `lead_notes`) into `<bank_dir>/<split>.npz`:
    audio int16 [lines, timbres + transpositions, samples]. When every clip has its "audio" (synthcaps_clips), the
    first `seconds` of the arrangement itself is the last timbre (`MIX`): the line heard inside the full mix, as
    the melody-conditioned stage LMs' training audio has it. Clips without a lead line, or whose line does not
    render, are skipped and named. Returns {"lines", "skipped", "path"}."""
    from musiclm_jax.audio.io import resample
    from musiclm_jax.data.synthcaps.sources import SourceError

    n = int(round(seconds * sample_rate))
    with_mix = bool(clips) and all("audio" in c for c in clips)
    rows, names, skipped = [], [], []
    for i, clip in enumerate(clips):
        name = str(clip.get("clip_id") or f"clip{i}")
        notes = [(p, s, e) for p, s, e in renditions.notes_of(clip) if s < seconds]
        if len(notes) < 3:
            skipped.append(f"{name} (lead line of {len(notes)} notes in {seconds:g} s)")
            continue
        rng = np.random.default_rng([seed, split_id(split), i])
        try:
            waves = [renditions.render_melody(notes, t, sample_rate, seconds, rng) for t in renditions.TIMBRES]
            if with_mix:
                mix = resample(np.asarray(clip["audio"], np.float32), int(clip.get("sample_rate", sample_rate)),
                               sample_rate)[:n]
                waves.append(np.pad(mix, (0, n - len(mix))))
            waves += [renditions.render_melody(renditions.transpose(notes, k), timbre, sample_rate, seconds, rng)
                      for k, timbre in zip(TRANSPOSITIONS, TRANSPOSED_TIMBRES)]
        except SourceError as e:
            skipped.append(f"{name} ({e})")
            continue
        rows.append(np.stack([np.clip(np.round(w[:n] * 32767), -32768, 32767).astype(np.int16) for w in waves]))
        names.append(name)
    if not rows:
        raise ValueError(f"no clip of split {split!r} has a lead line to render: use a SynthCaps config with lead "
                         "melodies (every config has them; check --split and --limit)")
    if skipped:
        log.warning("melody bank %s: skipped %d clips: %s", split, len(skipped), "; ".join(skipped))
    os.makedirs(bank_dir, exist_ok=True)
    path = os.path.join(bank_dir, f"{split}.npz")
    np.savez(path, audio=np.stack(rows), names=np.array(names))
    meta = {"sample_rate": sample_rate, "seconds": seconds,
            "timbres": list(renditions.TIMBRES) + ([MIX] if with_mix else []),
            "transpositions": list(TRANSPOSITIONS), "seed": seed}
    with open(os.path.join(bank_dir, "bank.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return {"lines": len(rows), "skipped": skipped, "path": path}


def load_bank(bank_dir: str, split: str) -> tuple[np.ndarray, list[str], dict]:
    """(audio int16 [lines, renditions, samples], names, meta) of a bank built by `build_bank`."""
    path = os.path.join(bank_dir, f"{split}.npz")
    if not os.path.exists(path):
        raise ValueError(f"no melody bank {path}: build it with `musiclm-jax melody render-bank --split {split}`")
    with np.load(path, allow_pickle=False) as z:
        audio, names = z["audio"], [str(n) for n in z["names"]]
    with open(os.path.join(bank_dir, "bank.json")) as f:
        return audio, names, json.load(f)


class TripletBatches(ResumableBatches):
    """{"anchor", "positive", "negative"}: float32 [batch, window_samples], and "line", "negative_line": int32
    [batch] melody ids (-1: a transposed copy) (see module docstring)."""

    def __init__(self, audio: np.ndarray, num_timbres: int, *, batch_size: int, window_samples: int, seed: int = 0,
                 split: str = "train", shard_index: int = 0, num_shards: int = 1, transposed_fraction: float = 0.5):
        self.audio = audio[shard_index::num_shards] if len(audio) >= 2 * num_shards else audio
        if len(self.audio) < 2:
            raise ValueError(f"a melody bank needs at least 2 lines, this shard has {len(self.audio)}")
        if window_samples > self.audio.shape[-1]:
            raise ValueError(f"window of {window_samples} samples is longer than the bank's renditions "
                             f"({self.audio.shape[-1]}): rebuild the bank with longer --seconds")
        self.num_timbres, self.batch_size, self.window = num_timbres, batch_size, window_samples
        self.key = (seed, split_id(split), shard_index, num_shards)
        self.train, self.transposed_fraction = split == "train", transposed_fraction

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        n, b = len(self.audio), self.batch_size
        rng = np.random.default_rng([*self.key, position])
        lines = []
        for p in range(position * b, position * b + b):   # each line once per epoch
            epoch, i = divmod(p, n)
            order = np.random.default_rng([*self.key, epoch, 7]).permutation(n) if self.train else np.arange(n)
            lines.append(int(order[i]))
        out = {"anchor": [], "positive": [], "negative": []}
        neg_lines = []
        for line in lines:
            a, p = rng.choice(self.num_timbres, 2, replace=False)
            start = int(rng.integers(self.audio.shape[-1] - self.window + 1)) if self.train else 0
            if rng.uniform() < self.transposed_fraction:
                neg = self.audio[line, self.num_timbres + int(rng.integers(self.audio.shape[1] - self.num_timbres))]
                neg_lines.append(-1)
            else:
                other = (line + 1 + int(rng.integers(n - 1))) % n
                neg = self.audio[other, int(rng.integers(self.num_timbres))]
                neg_lines.append(other)
            for key, wave in (("anchor", self.audio[line, a]), ("positive", self.audio[line, p]), ("negative", neg)):
                out[key].append(wave[start:start + self.window])
        batch = {k: np.stack(v).astype(np.float32) / 32768.0 for k, v in out.items()}
        return dict(batch, line=np.asarray(lines, np.int32), negative_line=np.asarray(neg_lines, np.int32))


@gin.configurable
def melody_triplets(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0,
                    num_shards: int = 1, bank_dir: str = gin.REQUIRED, window_seconds: float = 4.0,
                    transposed_fraction: float = 0.5) -> TripletBatches:
    """The trainer's dataset function over a rendition bank; split "eval" reads the bank's "validation"."""
    bank_split = {"eval": "validation"}.get(split, split)
    audio, _, meta = load_bank(bank_dir, bank_split)
    return TripletBatches(audio, len(meta["timbres"]), batch_size=batch_size,
                          window_samples=int(round(window_seconds * meta["sample_rate"])), seed=seed, split=split,
                          shard_index=shard_index, num_shards=num_shards, transposed_fraction=transposed_fraction)
