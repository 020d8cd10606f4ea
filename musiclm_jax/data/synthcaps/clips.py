"""SynthCaps clips as plain dicts, for the trainings and evaluations that read whole clips into memory.

A clip is ``{"audio": f32 [samples], "sample_rate": int, "caption": str, <attributes>...}``; the attributes are
SynthCaps' truth (genre, lead_instrument, bpm, mode, key, ...). `synthcaps_clips` reads a built TFDS config (gin:
`synthcaps_clips.config`, `.data_dir`); `render_clips` renders clips in-process without TFDS (tests, quick runs).
"""
from __future__ import annotations

import logging

import gin
import numpy as np

log = logging.getLogger(__name__)

ATTRIBUTES = ("genre", "lead_instrument", "bpm", "mode", "key", "mood", "dynamics", "source", "heldout", "score_id")
_SPLITS = {"eval": "validation"}


def _to_clip(example: dict, sample_rate: int, extra_keys: tuple[str, ...] = ()) -> dict:
    audio = np.asarray(example["audio"])
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    clip = {"audio": audio.astype(np.float32), "sample_rate": int(sample_rate)}
    for key in ("caption",) + ATTRIBUTES + tuple(extra_keys):
        if key in example:
            value = example[key]
            clip[key] = value.decode() if isinstance(value, bytes) else value
    return clip


@gin.configurable
def synthcaps_clips(split: str = "train", config: str = "tiny", data_dir: str | None = None,
                    limit: int | None = None, extra_keys: tuple[str, ...] = ()) -> list[dict]:
    """Clips of a built `synthcaps/<config>` TFDS dataset (build it with `musiclm-jax data build` first), with the
    example's `extra_keys` too (e.g. "lead_notes", "midi")."""
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
    return [_to_clip(ex, sample_rate, extra_keys) for ex in tfds.as_numpy(ds)]


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
