"""MuLan end to end: contrastive training with the shared trainer, then the quantizer fit, then evaluation.

Used by `musiclm-jax mulan ...` and by the tests; the training loop itself is `musiclm_jax.train.trainer.train`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable

import gin
import numpy as np

from musiclm_jax.quantization import embeddings as rvq_lib
from musiclm_jax.mulan import data as mulan_data
from musiclm_jax.mulan.api import MuLan
from musiclm_jax.data.synthcaps.clips import synthcaps_clips

log = logging.getLogger(__name__)


@gin.configurable
def train_mulan(fit_quantizer: bool = True, quantizer_fit_on: str = "audio",
                clips_fn: Callable[..., list[dict]] = synthcaps_clips, **train_kwargs) -> dict:
    """`mulan train`: the shared trainer (every argument from gin's `train.*`, or from `train_kwargs`; the dataset
    is `mulan_data.mulan_dataset`), then the conditioning quantizer fitted on the embeddings of the train clips
    `clips_fn(split="train")` (the ones `mulan_dataset` trains on; default: the built SynthCaps TFDS dataset).
    `quantizer_fit_on`: see `fit_and_save_quantizer`. Returns the trainer summary plus "quantizer" (the cosine
    lost by quantization, per number of levels) once training has reached its last step."""
    from musiclm_jax.train.launch import model_dir_of_config
    from musiclm_jax.train.trainer import train

    summary = train(**train_kwargs)
    summary.pop("state", None)
    if fit_quantizer and summary["step"] >= summary["num_steps"]:
        model_dir = train_kwargs.get("model_dir") or model_dir_of_config()
        summary["quantizer"] = fit_and_save_quantizer(model_dir, mulan_data.cached_clips(clips_fn, "train"),
                                                      fit_on=quantizer_fit_on)
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
