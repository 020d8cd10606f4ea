"""MuLan data: (audio window, tokenized caption) pairs from SynthCaps, as a resumable dataset function.

A *clip* is a dict ``{"audio": f32 [samples], "sample_rate": int, "caption": str, <attributes>...}`` where the
attributes are SynthCaps' truth (genre, lead_instrument, bpm, mode, ...) used by zero-shot evaluation.

`mulan_dataset(split=, batch_size=, seed=, shard_index=, num_shards=)` follows the trainer's dataset contract
(musiclm_jax/train/data.py): the batch at index n depends only on (seed, split, shard, n), so the iterator state is
just n and a resumed run sees the same batches. Training crops a random window per clip (clips shorter than a
window are zero-padded); eval takes the first window.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import gin
import numpy as np

from musiclm_jax.audio import resample
from musiclm_jax.mulan.audio import AudioConfig
from musiclm_jax.mulan.text import TextTokenizer

log = logging.getLogger(__name__)

ATTRIBUTES = ("genre", "lead_instrument", "bpm", "mode", "key", "mood", "dynamics", "source", "heldout", "score_id")
_SPLITS = {"eval": "validation"}


def _to_clip(example: dict, sample_rate: int) -> dict:
    audio = np.asarray(example["audio"])
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    clip = {"audio": audio.astype(np.float32), "sample_rate": int(sample_rate)}
    for key in ("caption",) + ATTRIBUTES:
        if key in example:
            value = example[key]
            clip[key] = value.decode() if isinstance(value, bytes) else value
    return clip


@gin.configurable
def synthcaps_clips(split: str = "train", config: str = "tiny", data_dir: str | None = None,
                    limit: int | None = None) -> list[dict]:
    """Clips of a built `synthcaps/<config>` TFDS dataset (build it with `musiclm-jax data build` first)."""
    import tensorflow_datasets as tfds

    import musiclm_jax.data.synthcaps.builder  # noqa: F401  (registers the builder)

    builder = tfds.builder(f"synthcaps/{config}", data_dir=data_dir)
    if not builder.is_prepared():
        raise ValueError(f"synthcaps/{config} is not built in {builder.data_dir}: build it first "
                         "(tfds builder download_and_prepare, or the data CLI)")
    sample_rate = int(builder.info.features["audio"].sample_rate)
    ds = builder.as_dataset(split=_SPLITS.get(split, split))
    if limit:
        ds = ds.take(limit)
    return [_to_clip(ex, sample_rate) for ex in tfds.as_numpy(ds)]


def render_clips(num_scores: int = 8, clip_seconds: float = 4.0, sample_rate: int = 16000, seed: int = 0,
                 splits: tuple[str, ...] = ("train", "validation", "test")) -> list[dict]:
    """Renders SynthCaps clips in-process, without TFDS (tests, quick experiments). Skips unrenderable specs."""
    from musiclm_jax.data.synthcaps import render, sources
    from musiclm_jax.data.synthcaps.specs import CorpusConfig, make_specs

    cfg = CorpusConfig("mulan_render", num_scores=num_scores, sample_rate=sample_rate, clip_seconds=clip_seconds,
                       seed=seed)
    clips = []
    for spec in make_specs(cfg):
        if spec.split not in splits:
            continue
        try:
            ex = render.render_clip(spec, sample_rate, clip_seconds)
        except sources.SourceError as e:
            log.warning("skipped clip %s: %s", spec.clip_id, e)
            continue
        clips.append(dict(_to_clip(ex, sample_rate), split=spec.split))
    return clips


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


class PairBatches:
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
        self.index = 0

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict | None) -> None:
        self.index = int((state or {}).get("index", 0))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        n, b = len(self.audio), self.batch_size
        # Epoch-wise permutation (each clip once per epoch), reproducible from (seed, shard, epoch).
        pos = self.index * b
        rows = []
        for p in range(pos, pos + b):
            epoch, i = divmod(p, n)
            order = np.random.default_rng([self.seed, self.shard, epoch]).permutation(n) if self.train \
                else np.arange(n)
            rows.append(int(order[i]))
        rng = np.random.default_rng([self.seed, self.shard, self.index, 1]) if self.train else None
        audio = np.stack([clip_window(self.audio[r], self.cfg, rng) for r in rows])
        ids, mask = self.tok([self.captions[r] for r in rows])
        self.index += 1
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
