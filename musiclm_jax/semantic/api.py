"""Semantic tokens from audio: a trained w2v-BERT checkpoint + its k-means.

    tok = SemanticTokenizer.from_checkpoint("runs/w2v_bert_tiny")   # needs <dir>/kmeans (fit-kmeans)
    ids = tok.tokens(wave, sample_rate)          # int32 [batch, frames] at 25 Hz; wave [samples] or [batch, samples]
    feats = tok.features(wave, sample_rate)      # float32 [batch, frames, D] (layer cfg.feature_layer)
    x = tok.token_features(wave, sample_rate)    # what the k-means clusters (features, or features + chroma)

Audio is mixed to mono ([batch, channels, samples] is accepted), resampled to 16 kHz, and processed in chunks of
`chunk_frames` frames with `context_frames` of real (or zero-padded) audio either side that is computed and
dropped. With the model's finite receptive field (local attention), this makes the result exactly the whole-clip
result: tokens do not depend on the chunk size, and a cut of the audio changes only the tokens within one
receptive field of the cut. Deterministic: no masks, no dropout, fixed shapes (one compile per chunk batch).

`chroma_weight` > 0 (recorded in the k-means, so it travels with the clusters) clusters each frame's features,
centred and normalised over their D dims to unit length, beside its L2-normalised STFT chroma times the weight. A
departure from the paper's plain w2v-BERT features, measured by `semantic probe --frames`: w2v-BERTs trained on
SynthCaps here learn onsets at best, never pitch (their tokens name a frame's pitch class at chance), and the
coarse stage cannot render a key its semantic tokens do not carry. 0 (the paper) leaves the features as they are.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.audio.io import as_mono_batch, resample
from musiclm_jax.quantization.fingerprint import params_fingerprint
from musiclm_jax.quantization.kmeans import KMeans
from musiclm_jax.semantic.w2v_bert import W2vBert, W2vBertConfig

KMEANS_DIR = "kmeans"
FULL_ATTENTION_CONTEXT = 100  # frames of context (4 s) when attention is unbounded: approximate invariance only


@nnx.jit(static_argnums=(2,))
def _features(model: W2vBert, waves: jax.Array, layer: int) -> jax.Array:
    return model.features(waves, layer)


def prepare_waves(wave, sample_rate: int, target_rate: int) -> np.ndarray:
    """-> float32 [batch, samples] mono at `target_rate`; rejects NaN/Inf and empty input with a clear error."""
    wave = as_mono_batch(wave, "waveform")
    return resample(wave, int(sample_rate), target_rate)


class SemanticTokenizer:
    """A w2v-BERT feature extractor and its k-means; `fingerprint` names the checkpoint (tokens record it)."""

    def __init__(self, model: W2vBert, kmeans: KMeans | None = None, fingerprint: str = "",
                 chunk_frames: int = 250, chunk_batch: int = 8, layer: int | None = None,
                 chroma_weight: float | None = None):
        self.model, self.cfg = model, model.cfg
        self.kmeans, self.fingerprint = kmeans, fingerprint
        self.layer = self.cfg.feature_layer if layer is None else layer
        if chunk_frames < 1 or chunk_batch < 1:
            raise ValueError("chunk_frames and chunk_batch must be >= 1")
        self.chunk_frames, self.chunk_batch = chunk_frames, chunk_batch
        rf = self.cfg.receptive_field_frames(self.layer)
        self.context_frames = FULL_ATTENTION_CONTEXT if rf is None else rf
        if chroma_weight is None:
            chroma_weight = float(kmeans.meta.get("chroma_weight", 0.0)) if kmeans is not None else 0.0
        if not np.isfinite(chroma_weight) or chroma_weight < 0:
            raise ValueError(f"chroma_weight must be a finite number >= 0, got {chroma_weight}")
        self.chroma_weight = float(chroma_weight)

    @classmethod
    def from_checkpoint(cls, model_dir: str, step: int | None = None, kmeans_dir: str | None = None,
                        require_kmeans: bool = True, **kwargs) -> "SemanticTokenizer":
        """Restores the parameters of the latest (or `step`) checkpoint in `model_dir` onto one device."""
        from musiclm_jax.semantic.family import GROUP, W2vBertFamily
        from musiclm_jax.train.loader import load_for_inference, saved_config

        if not os.path.isdir(model_dir):
            raise ValueError(f"w2v-BERT model directory {model_dir} does not exist")
        cfg = saved_config(model_dir, W2vBertConfig, step)
        kmeans_dir = kmeans_dir or os.path.join(model_dir, KMEANS_DIR)
        if require_kmeans and not os.path.isdir(kmeans_dir):
            raise ValueError(f"no k-means in {kmeans_dir}: run `musiclm-jax semantic fit-kmeans --model_dir "
                             f"{model_dir}` first (or pass require_kmeans=False for features only)")
        loaded = load_for_inference(W2vBertFamily(config=cfg), model_dir, step)
        model = loaded.models[GROUP]
        fingerprint = params_fingerprint(loaded.params)
        kmeans = KMeans.load(kmeans_dir, expected_fingerprint=fingerprint) if os.path.isdir(kmeans_dir) else None
        return cls(model, kmeans, fingerprint, **kwargs)

    # -- features --------------------------------------------------------------------------------------------------
    def features(self, wave, sample_rate: int) -> np.ndarray:
        """float32 [batch, frames, D], frames = samples_at_16k // 640."""
        waves = prepare_waves(wave, sample_rate, self.cfg.sample_rate)
        spf, c, ctx = self.cfg.samples_per_frame, self.chunk_frames, self.context_frames
        b, n = waves.shape
        frames = n // spf
        if frames < 1:
            raise ValueError(f"audio of {n} samples at {self.cfg.sample_rate} Hz is shorter than one frame "
                             f"({spf} samples): give longer audio")
        num_chunks = -(-frames // c)
        padded = np.zeros((b, (num_chunks * c + 2 * ctx) * spf), np.float32)
        padded[:, ctx * spf:ctx * spf + frames * spf] = waves[:, :frames * spf]
        width = (c + 2 * ctx) * spf
        chunks = np.stack([padded[:, i * c * spf:i * c * spf + width] for i in range(num_chunks)], 1)
        chunks = chunks.reshape(b * num_chunks, width)
        out = []
        for i in range(0, len(chunks), self.chunk_batch):  # fixed batch of chunks: one compiled shape
            part = chunks[i:i + self.chunk_batch]
            pad = self.chunk_batch - len(part)
            part = np.concatenate([part, np.zeros((pad, width), np.float32)]) if pad else part
            feats = np.asarray(_features(self.model, jnp.asarray(part), self.layer))
            out.append(feats[:len(feats) - pad, ctx:ctx + c])
        feats = np.concatenate(out).reshape(b, num_chunks * c, -1)
        return feats[:, :frames]

    def token_features(self, wave, sample_rate: int) -> np.ndarray:
        """float32 [batch, frames, D (+ 12 with chroma)]: what the k-means clusters (see the module docstring)."""
        feats = self.features(wave, sample_rate)
        if not self.chroma_weight:
            return feats
        from musiclm_jax.audio.features import chroma_frames

        waves = prepare_waves(wave, sample_rate, self.cfg.sample_rate)
        feats = feats - feats.mean(-1, keepdims=True)
        feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-6)
        chroma = np.stack([chroma_frames(w, self.cfg.sample_rate, self.cfg.samples_per_frame, frames=feats.shape[1])
                           for w in waves])
        return np.concatenate([feats, self.chroma_weight * chroma], -1).astype(np.float32)

    def tokens(self, wave, sample_rate: int) -> np.ndarray:
        """int32 [batch, frames] semantic token ids in [0, num_clusters)."""
        if self.kmeans is None:
            raise ValueError("this tokenizer has no k-means: run `musiclm-jax semantic fit-kmeans` first")
        return self.kmeans.predict(self.token_features(wave, sample_rate)).astype(np.int32)

    @property
    def num_tokens(self) -> int:
        return 0 if self.kmeans is None else self.kmeans.num_clusters

    def describe(self) -> dict:
        """What a token file should record about its tokenizer."""
        return {"w2v_bert_fingerprint": self.fingerprint, "feature_layer": self.layer,
                "num_clusters": self.num_tokens, "frame_rate": self.cfg.frame_rate, "chroma_weight": self.chroma_weight,
                "kmeans_fingerprint": "" if self.kmeans is None else self.kmeans.fingerprint}
