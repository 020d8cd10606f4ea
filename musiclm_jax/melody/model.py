"""The melody embedder: log-mel frames -> patches of `patch_frames` frames (all bands) -> a bidirectional
transformer (the stage LMs' layers, lm/transformer.py, with a full mask and no position bias) over learned
positions -> mean pool -> `embed_dim` unit vector. Paper: ViT, 12 layers, 6 heads, d 512, 192-d embeddings."""
from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.audio.features import log_mel_spectrogram
from musiclm_jax.audio.io import WindowedAudio
from musiclm_jax.lm import transformer as tr
from musiclm_jax.train.partitioning import with_logical_constraint


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MelodyConfig(WindowedAudio):
    sample_rate: int = 16000
    window_seconds: float = 4.0
    stride_seconds: float = 0.5       # hop between the windows of long audio (one embedding per window)
    n_fft: int = 1024
    hop_length: int = 320             # 20 ms frames
    n_mels: int = 128                 # fine bands below ~2 kHz, where melodies live
    fmax: float = 4000.0
    mel_mean: float = -6.0
    mel_std: float = 4.0
    patch_frames: int = 4             # 80 ms per patch
    d_model: int = 512
    num_layers: int = 12
    num_heads: int = 6
    head_dim: int = 64
    d_ff: int = 2048
    dropout_rate: float = 0.0
    embed_dim: int = 192
    rvq_levels: int = 24              # the paper's melody tokens: 24 x 512
    rvq_codebook_size: int = 512

    @property
    def num_patches(self) -> int:
        return (self.window_samples // self.hop_length + 1) // self.patch_frames

    def transformer(self) -> tr.TransformerConfig:
        return tr.TransformerConfig(vocab_size=1, num_layers=self.num_layers, num_heads=self.num_heads,
                                    head_dim=self.head_dim, d_model=self.d_model, d_ff=self.d_ff,
                                    dropout_rate=self.dropout_rate, max_len=self.num_patches, dtype="float32")


class MelodyEmbedder(nnx.Module):
    """waveform windows [B, window_samples] -> unit embeddings [B, embed_dim]."""

    def __init__(self, cfg: MelodyConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        tcfg = cfg.transformer()
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        with nnx.use_eager_sharding(False):
            self.patch = nnx.Linear(cfg.patch_frames * cfg.n_mels, cfg.d_model, rngs=rngs,
                                    kernel_init=nnx.with_partitioning(init, (None, "embed")))
            self.pos = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.02), (None, "embed"))(
                rngs.params(), (cfg.num_patches, cfg.d_model)))
            self.layers = nnx.List([tr.DecoderLayer(tcfg, rngs=rngs) for _ in range(cfg.num_layers)])
            self.norm = tr.RMSNorm(tcfg, rngs=rngs)
            self.out = nnx.Linear(cfg.d_model, cfg.embed_dim, rngs=rngs,
                                  kernel_init=nnx.with_partitioning(init, ("embed", None)))

    def features(self, wave: jax.Array) -> jax.Array:
        c = self.cfg
        mel = log_mel_spectrogram(wave, c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels,
                                  fmax=c.fmax)
        return (mel - c.mel_mean) / c.mel_std

    def __call__(self, wave: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        c = self.cfg
        if wave.shape[-1] != c.window_samples:
            raise ValueError(f"the melody embedder takes windows of {c.window_samples} samples, got "
                             f"{wave.shape[-1]}: cut them with melody.api.windows()")
        mel = self.features(wave)                                   # [B, frames, mels]
        b = mel.shape[0]
        n = c.num_patches
        x = mel[:, :n * c.patch_frames].reshape(b, n, c.patch_frames * c.n_mels)
        x = self.patch(x) + self.pos[...][None]
        x = with_logical_constraint(x, ("batch", "length", "embed"))
        mask = jnp.ones((1, 1, n, n), bool)
        for layer in self.layers:
            x, _ = layer(x, mask, jnp.zeros((), jnp.float32), deterministic=deterministic, rngs=rngs)
        pooled = self.norm(x).mean(axis=1)
        emb = self.out(pooled)
        return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-6)
