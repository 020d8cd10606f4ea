"""Audio batches for codec training, in the trainer's dataset-function form (`fn(split=, batch_size=, ...)`).

* `synthetic_tones`: harmonic notes with envelopes, vibrato and a little noise, made from (seed, split, shard,
  batch index) alone: no files, resumable by construction. Tests and the CPU quick start use it.
* `audio_folder`: random crops of the audio files in a folder (e.g. a SynthCaps render or your own music),
  loaded with the shared robust loader; unreadable, silent or too-short files are skipped, counted and named once.
"""
from __future__ import annotations

import logging
import os

import gin
import numpy as np

from musiclm_jax.audio.io import list_audio_files, load_clips
from musiclm_jax.train.data import ResumableBatches, split_id

log = logging.getLogger(__name__)



def tone_clip(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """A few overlapping harmonic notes (random pitch, harmonics, attack/decay, vibrato) plus faint noise."""
    t = np.arange(num_samples) / sample_rate
    out = np.zeros(num_samples, np.float64)
    for _ in range(rng.integers(1, 4)):
        f0 = 110.0 * 2 ** (rng.uniform(0, 36) / 12)  # A2 .. A5
        start = rng.uniform(0, 0.5) * t[-1]
        env = np.clip((t - start) / 0.01, 0, 1) * np.exp(-np.maximum(t - start, 0) * rng.uniform(1, 6))
        vibrato = 1 + 0.005 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sample_rate
        for h in range(1, 6):
            if f0 * h < sample_rate / 2:
                out += env * rng.uniform(0.1, 1.0) / h * np.sin(h * phase)
    out += rng.normal(0, 0.003, num_samples)
    return (0.5 * out / max(np.abs(out).max(), 1e-6)).astype(np.float32)


class ToneBatches(ResumableBatches):
    """Iterator of ``{"audio": float32 [batch, num_samples]}`` (see module docstring)."""

    def __init__(self, *, batch_size: int, num_samples: int, sample_rate: int, seed: int = 0, split: str = "train",
                 shard_index: int = 0, num_shards: int = 1):
        if batch_size < 1 or num_samples < 1:
            raise ValueError(f"batch_size and num_samples must be >= 1 (got {batch_size}, {num_samples})")
        self.batch_size, self.num_samples, self.sample_rate = batch_size, num_samples, sample_rate
        self.key = (seed, split_id(split), shard_index, num_shards)

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([*self.key, position])
        return {"audio": np.stack([tone_clip(rng, self.num_samples, self.sample_rate)
                                   for _ in range(self.batch_size)])}


@gin.configurable
def synthetic_tones(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0,
                    num_shards: int = 1, num_samples: int = 8000, sample_rate: int = 16000) -> ToneBatches:
    return ToneBatches(batch_size=batch_size, num_samples=num_samples, sample_rate=sample_rate, seed=seed,
                       split=split, shard_index=shard_index, num_shards=num_shards)


class FolderBatches(ResumableBatches):
    """Random crops of the folder's files; the split takes every 10th file for eval (file order is sorted)."""

    def __init__(self, *, folder: str, batch_size: int, num_samples: int, sample_rate: int, seed: int = 0,
                 split: str = "train", shard_index: int = 0, num_shards: int = 1):
        files = list_audio_files(folder)
        held_out = split_id(split) > 0
        chosen = [f for i, f in enumerate(files) if (i % 10 == 9) == held_out] or files
        self.waves, _ = load_clips(chosen[shard_index::num_shards] or chosen, sample_rate, min_samples=num_samples)
        if not self.waves:
            raise ValueError(f"no usable audio of >= {num_samples} samples under {folder!r} for split {split!r}")
        self.batch_size, self.num_samples = batch_size, num_samples
        self.key = (seed, split_id(split), shard_index, num_shards)

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([*self.key, position])
        out = []
        for _ in range(self.batch_size):
            wave = self.waves[rng.integers(len(self.waves))]
            start = rng.integers(wave.shape[-1] - self.num_samples + 1)
            out.append(wave[start:start + self.num_samples])
        return {"audio": np.stack(out).astype(np.float32)}


@gin.configurable
def audio_folder(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                 folder: str = gin.REQUIRED, num_samples: int = 8000, sample_rate: int = 16000) -> FolderBatches:
    return FolderBatches(folder=folder, batch_size=batch_size, num_samples=num_samples, sample_rate=sample_rate,
                         seed=seed, split=split, shard_index=shard_index, num_shards=num_shards)


class WaveBatches(FolderBatches):
    """Random crops of in-memory waves (e.g. SynthCaps clips); same contract as FolderBatches."""

    def __init__(self, *, waves: list[np.ndarray], batch_size: int, num_samples: int, seed: int = 0,
                 split: str = "train", shard_index: int = 0, num_shards: int = 1):
        self.waves = [w for w in waves[shard_index::num_shards] or waves if w.shape[-1] >= num_samples]
        if not self.waves:
            raise ValueError(f"no clip has >= {num_samples} samples: lower num_samples")
        self.batch_size, self.num_samples = batch_size, num_samples
        self.key = (seed, split_id(split), shard_index, num_shards)


@gin.configurable
def synthcaps_audio(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0,
                    num_shards: int = 1, config: str = "tiny", data_dir: str | None = None, num_samples: int = 8000,
                    sample_rate: int = 16000) -> WaveBatches:
    """Crops of a built SynthCaps TFDS corpus (`musiclm-jax data build --dataset synthcaps`), at `sample_rate`."""
    from musiclm_jax.audio.io import resample
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips

    clips = synthcaps_clips(split="validation" if split == "eval" else split, config=config, data_dir=data_dir)
    waves = [resample(c["audio"], c["sample_rate"], sample_rate) for c in clips]
    return WaveBatches(waves=waves, batch_size=batch_size, num_samples=num_samples, seed=seed, split=split,
                       shard_index=shard_index, num_shards=num_shards)
