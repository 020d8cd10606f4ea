"""MuLan end to end: contrastive training with the shared trainer, then the quantizer fit, then evaluation.

Used by `musiclm-jax mulan ...` and by the tests; the training loop itself is `musiclm_jax.train.trainer.train`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Callable

import gin
import numpy as np

from musiclm_jax.quantization import embeddings as rvq_lib
from musiclm_jax.mulan.api import MuLan, save_config
from musiclm_jax.data.synthcaps.clips import synthcaps_clips
from musiclm_jax.mulan.data import PairBatches
from musiclm_jax.mulan.family import MuLanFamily
from musiclm_jax.mulan.text import TextTokenizer

log = logging.getLogger(__name__)


def _dataset(clips_by_split: Callable[[str], list[dict]], audio_cfg, max_length, twins, max_semitones, *, split,
             batch_size, seed, shard_index, num_shards):
    return PairBatches(clips_by_split(split), audio_cfg, TextTokenizer(max_length), batch_size, seed=seed,
                       train=split == "train", shard_index=shard_index, num_shards=num_shards, twins=twins,
                       max_semitones=max_semitones)


@gin.configurable
def train_mulan(model_dir: str = gin.REQUIRED, family: MuLanFamily | None = None,
                clips_fn: Callable[..., list[dict]] = synthcaps_clips, batch_size: int = 16, num_steps: int = 200,
                eval_period: int = 0, eval_steps: int = 1, fit_quantizer: bool = True, twins: float = 0.0,
                max_semitones: int = 3, quantizer_fit_on: str = "audio", **train_kwargs) -> dict:
    """Trains MuLan into `model_dir` (resumable), then fits the conditioning quantizer on train audio embeddings.

    `clips_fn(split=...)` gives the clips of a split (default: the built SynthCaps TFDS dataset). `twins`: the
    fraction of each training batch made of transposed copies of its other rows (mulan/data.py);
    `quantizer_fit_on`: see `fit_and_save_quantizer`.
    Returns the trainer summary plus "quantizer" (the cosine lost by quantization, per number of levels).
    """
    from musiclm_jax.train.trainer import train

    family = family or MuLanFamily()
    cache: dict[str, list[dict]] = {}

    def clips_by_split(split):
        if split not in cache:
            cache[split] = clips_fn(split="validation" if split == "eval" else split)
        return cache[split]

    save_config(model_dir, family.config)
    dataset = functools.partial(_dataset, clips_by_split, family.config.audio, family.config.text.max_length, twins,
                                max_semitones)
    summary = train(family, model_dir=model_dir, dataset=dataset, batch_size=batch_size, num_steps=num_steps,
                    eval_dataset=dataset if eval_period else None, eval_period=eval_period, eval_steps=eval_steps,
                    **train_kwargs)
    summary.pop("state", None)
    if fit_quantizer and summary["step"] >= num_steps:
        summary["quantizer"] = fit_and_save_quantizer(model_dir, clips_by_split("train"), fit_on=quantizer_fit_on)
    return summary


QUANTIZER_FITS = ("audio", "audio+text")


def fit_and_save_quantizer(model_dir: str, train_clips: list[dict], seed: int = 0, fit_on: str = "audio") -> dict:
    """Fits the RVQ on the train clips' embeddings, saves it in model_dir, writes quantizer_report.json.

    fit_on "audio" (the paper's: the stage LMs train on audio tokens) or "audio+text": the clips' audio and caption
    embeddings together, so the codebooks also cover where the text embeddings lie (generation conditions on text
    tokens; a text-audio gap in the shared space otherwise becomes a gap between the tokens trained on and used)."""
    if fit_on not in QUANTIZER_FITS:
        raise ValueError(f"unknown quantizer fit {fit_on!r}: use one of {', '.join(QUANTIZER_FITS)}")
    mulan = MuLan.from_checkpoint(model_dir)
    audio = np.stack([mulan.embed_audio(c["audio"], c["sample_rate"]) for c in train_clips])
    text = mulan.embed_text([c["caption"] for c in train_clips])
    mulan.fit_quantizer(audio if fit_on == "audio" else np.concatenate([audio, text]), seed=seed)
    report = {"fit_on": fit_on, "audio": rvq_lib.quantization_report(mulan.quantizer, audio),
              # The same codebooks applied to the captions' text embeddings (what generation conditions on).
              "text": rvq_lib.quantization_report(mulan.quantizer, text)}
    mulan.save_quantizer(model_dir)
    with open(os.path.join(model_dir, "quantizer_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log.info("quantizer: cosine lost %.4f (audio), %.4f (text) on %d train clips", report["audio"]["cosine_lost"],
             report["text"]["cosine_lost"], report["audio"]["num"])
    return report
