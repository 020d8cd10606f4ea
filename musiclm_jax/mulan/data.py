"""MuLan data: (audio window, tokenized caption) pairs from SynthCaps, as a resumable dataset function.

A *clip* is a dict ``{"audio": f32 [samples], "sample_rate": int, "caption": str, <attributes>...}`` (read by
`data/synthcaps/clips.py`) whose attributes are SynthCaps' truth, used by zero-shot evaluation.

`mulan_dataset(split=, batch_size=, seed=, shard_index=, num_shards=)` follows the trainer's dataset contract
(musiclm_jax/train/data.py): the batch at index n depends only on (seed, split, shard, n), so the iterator state is
just n and a resumed run sees the same batches. Training crops a random window per clip (clips shorter than a
window are zero-padded); eval takes the first window.

Transposed twins (`twins` > 0, training only): the last `round(twins x batch)` rows of a batch are copies of its
first rows played 2 ** (k / 12) times faster (k = +-1..`max_semitones`, 0 excluded), so k semitones higher and
that much faster, with the caption restated to match (`captions.restate`: key, BPM and the words that follow from
them). Each twin is its original's hardest negative: the two differ only in key and tempo, which the contrastive
loss otherwise never has to separate on a small corpus where genre and instrument tell clips apart.
"""
from __future__ import annotations

import functools
from typing import Callable

import gin
import numpy as np

from musiclm_jax.audio import change_speed, resample
from musiclm_jax.data.synthcaps.captions import BPM_PATTERN, restate
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
                 seed: int = 0, train: bool = True, shard_index: int = 0, num_shards: int = 1, twins: float = 0.0,
                 max_semitones: int = 3):
        clips = clips[shard_index::num_shards]
        if not clips:
            raise ValueError("no clips for this MuLan dataset shard: build or pass a larger corpus")
        if not 0.0 <= twins <= 0.5 or max_semitones < 1:
            raise ValueError(f"twins must be in [0, 0.5] and max_semitones >= 1, got {twins} and {max_semitones}")
        self.num_twins = int(round(twins * batch_size)) if train else 0
        self.max_semitones = max_semitones
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
        m = self.num_twins
        audio = [clip_window(self.audio[r], self.cfg, rng) for r in rows[:b - m]]
        captions = [self.captions[r] for r in rows[:b - m]]
        for r in rows[:m]:
            audio_r, caption_r = self.twin(r, rng)
            audio.append(audio_r)
            captions.append(caption_r)
        ids, mask = self.tok(captions)
        return {"audio": np.stack(audio).astype(np.float32), "ids": ids, "mask": mask}

    def twin(self, row: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """Clip `row` transposed by a random non-zero k semitones (and k semitones faster), caption restated."""
        k = int(rng.choice([s for s in range(-self.max_semitones, self.max_semitones + 1) if s]))
        ratio = 2.0 ** (k / 12)
        caption = self.captions[row]
        b = BPM_PATTERN.search(caption)
        caption = restate(caption, semitones=k, bpm=float(b.group(1)) * ratio if b else None)
        # Cut enough of the clip that the sped-up window is full length.
        need = int(np.ceil(self.cfg.window_samples * ratio)) + 1
        src = self.audio[row]
        start = int(rng.integers(0, max(src.shape[0] - need, 0) + 1))
        wave = change_speed(src[start:start + need], ratio)[:self.cfg.window_samples]
        return np.pad(wave, (0, self.cfg.window_samples - wave.shape[0])), caption


@gin.configurable
def mulan_dataset(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                  clips_fn: Callable[..., list[dict]] = synthcaps_clips, audio_cfg: AudioConfig | None = None,
                  max_length: int | None = None, twins: float = 0.0, max_semitones: int = 3) -> PairBatches:
    """The trainer's dataset (`train.dataset = @mulan_dataset`): caption-audio pairs of `clips_fn(split=...)`
    (the trainer's "eval" split reads "validation"). `audio_cfg` and `max_length` default to the gin-bound
    MuLanConfig's; `twins`: the fraction of each training batch that is transposed copies of its other rows (see
    the module docstring)."""
    if audio_cfg is None or max_length is None:
        from musiclm_jax.mulan.model import MuLanConfig
        cfg = MuLanConfig()
        audio_cfg = audio_cfg or cfg.audio
        max_length = max_length or cfg.text.max_length
    clips = cached_clips(clips_fn, "validation" if split == "eval" else split)
    return PairBatches(clips, audio_cfg, TextTokenizer(max_length), batch_size, seed=seed, train=split == "train",
                       shard_index=shard_index, num_shards=num_shards, twins=twins, max_semitones=max_semitones)


@functools.lru_cache(maxsize=4)
def cached_clips(clips_fn: Callable[..., list[dict]], split: str) -> list[dict]:
    """`clips_fn(split=split)`, read once per process (training, evaluation and the quantizer fit share it)."""
    return clips_fn(split=split)
