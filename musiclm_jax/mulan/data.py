"""MuLan data: (audio window, tokenized caption) pairs from SynthCaps, as a resumable dataset function.

A *clip* is a dict ``{"audio": f32 [samples], "sample_rate": int, "caption": str, <attributes>...}`` (read by
`data/synthcaps/clips.py`) whose attributes are SynthCaps' truth, used by zero-shot evaluation.

`mulan_dataset(split=, batch_size=, seed=, shard_index=, num_shards=)` follows the trainer's dataset contract
(musiclm_jax/train/data.py): the batch at index n depends only on (seed, split, shard, n), so the iterator state is
just n and a resumed run sees the same batches. Training crops a random window per clip (clips shorter than a
window are zero-padded); eval takes the first window.
"""
from __future__ import annotations

import functools
from typing import Callable

import gin
import numpy as np

from musiclm_jax.audio import resample
from musiclm_jax.data.synthcaps.clips import synthcaps_clips
from musiclm_jax.mulan.audio import AudioConfig
from musiclm_jax.mulan.text import TextTokenizer
from musiclm_jax.train.data import ResumableBatches


def clip_window(audio: np.ndarray, cfg: AudioConfig, rng: np.random.Generator | None) -> np.ndarray:
    """One window of a clip: random start with `rng`, else the first; short clips are zero-padded."""
    w = cfg.window_samples
    if audio.shape[0] <= w:
        return np.pad(audio, (0, w - audio.shape[0]))
    start = 0 if rng is None else int(rng.integers(0, audio.shape[0] - w + 1))
    return audio[start:start + w]


def prepare_audio(clip: dict, cfg: AudioConfig) -> np.ndarray:
    """The clip's audio at the tower's sample rate."""
    return resample(clip["audio"], clip["sample_rate"], cfg.sample_rate)


class PairBatches(ResumableBatches):
    """Iterator of {"audio", "ids", "mask"} batches over `clips` (this host's shard), resumable by batch index."""

    def __init__(self, clips: list[dict], audio_cfg: AudioConfig, tokenizer: TextTokenizer, batch_size: int,
                 seed: int = 0, train: bool = True, shard_index: int = 0, num_shards: int = 1):
        clips = clips[shard_index::num_shards]
        if not clips:
            raise ValueError("no clips for this MuLan dataset shard: build or pass a larger corpus")
        self.audio = [prepare_audio(c, audio_cfg) for c in clips]
        self.captions = [c["caption"] for c in clips]
        self.cfg, self.tok, self.batch_size = audio_cfg, tokenizer, batch_size
        self.seed, self.train, self.shard = seed, train, shard_index

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        n, b = len(self.audio), self.batch_size
        # Epoch-wise permutation (each clip once per epoch), reproducible from (seed, shard, epoch).
        pos = position * b
        rows = []
        for p in range(pos, pos + b):
            epoch, i = divmod(p, n)
            order = np.random.default_rng([self.seed, self.shard, epoch]).permutation(n) if self.train \
                else np.arange(n)
            rows.append(int(order[i]))
        rng = np.random.default_rng([self.seed, self.shard, position, 1]) if self.train else None
        audio = np.stack([clip_window(self.audio[r], self.cfg, rng) for r in rows])
        ids, mask = self.tok([self.captions[r] for r in rows])
        return {"audio": audio.astype(np.float32), "ids": ids, "mask": mask}


@gin.configurable
def mulan_dataset(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                  clips_fn: Callable[..., list[dict]] = synthcaps_clips, audio_cfg: AudioConfig | None = None,
                  max_length: int = 128) -> PairBatches:
    """Trainer dataset function. `audio_cfg` defaults to the gin-bound MuLanConfig's audio tower."""
    if audio_cfg is None:
        from musiclm_jax.mulan.model import MuLanConfig
        audio_cfg = MuLanConfig().audio
    clips = _cached_clips(clips_fn, split)
    return PairBatches(clips, audio_cfg, TextTokenizer(max_length), batch_size, seed=seed, train=split == "train",
                       shard_index=shard_index, num_shards=num_shards)


@functools.lru_cache(maxsize=4)
def _cached_clips(clips_fn, split):
    return clips_fn(split=split)
