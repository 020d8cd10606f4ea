"""The MuLan inference API: embeddings and conditioning tokens from text or audio.

    mulan = MuLan.from_checkpoint("runs/mulan_tiny")
    mulan.embed_text(["a calm piano piece"])          # [1, D] unit vectors
    mulan.embed_audio(wave, sample_rate)               # [D]: windows of window_seconds every stride_seconds, averaged
    mulan.tokens_from_text(["a calm piano piece"])    # [1, Q] int32 (needs the fitted quantizer)
    mulan.tokens_from_audio(wave, sample_rate)         # [Q] int32

Audio embedding: the L2-normalised mean of the unit window embeddings (the mean alone is not a unit vector; the
direction is what cosine similarity and the quantizer use). Audio shorter than one window is zero-padded to it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.audio.io import check_samples, resample
from musiclm_jax.quantization import embeddings as rvq_lib
from musiclm_jax.mulan.audio import audio_windows
from musiclm_jax.mulan.model import MuLanConfig, MuLanModel
from musiclm_jax.mulan.text import TextTokenizer

QUANTIZER_DIR = "quantizer"


@nnx.jit
def _embed_windows(model: MuLanModel, windows: jax.Array) -> jax.Array:
    return model.embed_audio(windows)


@nnx.jit
def _embed_tokens(model: MuLanModel, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return model.embed_text(ids, mask)


class MuLan:
    """A trained MuLan model (+ its quantizer, once fitted). Not thread-safe; one per process is enough."""

    def __init__(self, model: MuLanModel, quantizer=None, batch_size: int = 32):
        self.model = model
        self.cfg: MuLanConfig = model.cfg
        self.quantizer = quantizer
        self.batch_size = batch_size
        self.tokenizer = TextTokenizer(self.cfg.text.max_length)

    @classmethod
    def from_checkpoint(cls, model_dir: str, step: int | None = None) -> "MuLan":
        """Loads the latest (or `step`) trainer checkpoint of `model_dir`, and its quantizer when present."""
        from musiclm_jax.mulan.family import GROUP, MuLanFamily
        from musiclm_jax.train.checkpoints import Checkpointer, overlay
        from musiclm_jax.train.loader import load_for_inference, saved_config

        if not os.path.isdir(model_dir):
            raise ValueError(f"MuLan model directory {model_dir} does not exist")
        if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
            raise ValueError(f"{model_dir} holds no MuLan checkpoints/: pass the model_dir of `musiclm-jax mulan "
                             "train`")
        ckpt = Checkpointer(model_dir, async_save=False)
        try:
            meta = ckpt.read_meta(step)
        finally:
            ckpt.close()
        cfg = saved_config(model_dir, MuLanConfig, meta=meta)
        dropped = meta.get("dropped", [])
        # The checkpoint holds the (fine-tuned) text tower, unless an export left out a frozen pretrained one: then
        # the tower is read from its package again, and everything else from the checkpoint.
        text_cfg = cfg.text if dropped else dataclasses.replace(cfg.text, pretrained=None)
        family = MuLanFamily(dataclasses.replace(cfg, text=text_cfg))

        def with_pretrained_tower(params: dict) -> dict:
            fresh = family.init(nnx.Rngs(0))
            return overlay({g: nnx.to_pure_dict(nnx.state(m, nnx.Param)) for g, m in fresh.items()}, params)

        model = load_for_inference(family, model_dir, step, fill_dropped=with_pretrained_tower).models[GROUP]
        model.cfg = cfg
        quantizer = None
        if os.path.isdir(os.path.join(model_dir, QUANTIZER_DIR)):
            quantizer = rvq_lib.load_rvq(os.path.join(model_dir, QUANTIZER_DIR), cfg.rvq_levels,
                                         cfg.rvq_codebook_size, cfg.embed_dim)
        return cls(model, quantizer)

    # -- embeddings ------------------------------------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> unit vectors [N, D]. Empty text is an error; text over the token limit is truncated."""
        ids, mask = self.tokenizer(texts)
        out = []
        for i in range(0, len(ids), self.batch_size):
            n = len(ids[i:i + self.batch_size])
            pad = self.batch_size - n if len(ids) > self.batch_size else 0  # one compiled shape for big lists
            chunk_ids = np.pad(ids[i:i + n], ((0, pad), (0, 0)))
            chunk_mask = np.pad(mask[i:i + n], ((0, pad), (0, 0)))
            out.append(np.asarray(_embed_tokens(self.model, jnp.asarray(chunk_ids), jnp.asarray(chunk_mask)))[:n])
        return np.concatenate(out)

    def window_embeddings(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Unit embeddings [n_windows, D] of one clip's windows (see `audio_windows`)."""
        wave = np.asarray(wave, np.float32)
        if wave.ndim == 2:
            wave = wave.mean(0) if wave.shape[0] < wave.shape[1] else wave.mean(1)
        check_samples(wave, "waveform")
        wave = resample(wave, int(sample_rate), self.cfg.audio.sample_rate)
        windows = audio_windows(wave, self.cfg.audio)
        out = [np.asarray(_embed_windows(self.model, jnp.asarray(windows[i:i + self.batch_size])))
               for i in range(0, len(windows), self.batch_size)]
        return np.concatenate(out)

    def embed_audio(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """One clip -> unit vector [D]: normalised mean of its window embeddings."""
        mean = self.window_embeddings(wave, sample_rate).mean(0)
        return mean / max(float(np.linalg.norm(mean)), 1e-9)

    # -- tokens ----------------------------------------------------------------------------------------------------
    def _need_quantizer(self):
        if self.quantizer is None:
            raise ValueError("this MuLan has no fitted quantizer: run `musiclm-jax mulan fit-quantizer` "
                             "(or MuLan.fit_quantizer) first")
        return self.quantizer

    def fit_quantizer(self, audio_embeddings: np.ndarray, seed: int = 0):
        """Fits the conditioning RVQ on audio embeddings [N, D] (sizes from the config); returns its report."""
        self.quantizer = rvq_lib.fit_rvq(audio_embeddings, self.cfg.rvq_levels, self.cfg.rvq_codebook_size,
                                         self.cfg.rvq_kmeans_iters, seed)
        return rvq_lib.quantization_report(self.quantizer, audio_embeddings)

    def save_quantizer(self, model_dir: str) -> str:
        return rvq_lib.save_rvq(self._need_quantizer(), os.path.join(model_dir, QUANTIZER_DIR))

    def tokens_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        return rvq_lib.encode(self._need_quantizer(), embeddings)

    def tokens_from_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> conditioning tokens [N, Q] (int32, each in [0, codebook_size))."""
        return self.tokens_from_embeddings(self.embed_text(texts))

    def tokens_from_audio(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """One clip -> conditioning tokens [Q] (int32)."""
        return self.tokens_from_embeddings(self.embed_audio(wave, sample_rate)[None])[0]
