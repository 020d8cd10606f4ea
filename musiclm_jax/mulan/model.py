"""MuLan: audio tower + text tower, each projected into one shared L2-normalised space (paper: 128-d)."""
from __future__ import annotations

import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.mulan.audio import AudioConfig, AudioEncoder
from musiclm_jax.mulan.text import TextConfig, build_text_encoder, minilm_config
from musiclm_jax.train.partitioning import with_logical_constraint

LOSSES = ("softmax", "sigmoid")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MuLanConfig:
    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    text: TextConfig = dataclasses.field(default_factory=minilm_config)
    embed_dim: int = 128
    loss: str = "softmax"            # "softmax" (contrastive, learnable temperature) or "sigmoid" (pairwise)
    init_temperature: float = 0.07   # softmax: logits = cos / T; sigmoid starts at T = 0.1 (SigLIP)
    init_bias: float = -10.0         # sigmoid only
    freeze_text_tower: bool = False  # keep the pretrained BERT fixed, train only the text projection
    # quantizer (fitted after training on audio embeddings; paper 12 x 1024)
    rvq_levels: int = 12
    rvq_codebook_size: int = 1024
    rvq_kmeans_iters: int = 20

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"unknown MuLan loss {self.loss!r}: use one of {LOSSES}")
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")


@gin.configurable
def audio_config(**kwargs) -> AudioConfig:
    """gin hook: `audio_config.stage_sizes = (3, 4, 6, 3)` etc."""
    if "stage_sizes" in kwargs:
        kwargs["stage_sizes"] = tuple(kwargs["stage_sizes"])
    return AudioConfig(**kwargs)


@gin.configurable
def text_config(pretrained: str | None = "minilm", **kwargs) -> TextConfig:
    """gin hook: MiniLM's own sizes when pretrained (overrides allowed, e.g. max_length); else a random BERT."""
    return minilm_config(**kwargs) if pretrained == "minilm" else TextConfig(pretrained=pretrained, **kwargs)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / |x|, finite for a zero vector (returns ~0 instead of NaN)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _proj(rngs, d_in, d_out):
    return nnx.Linear(d_in, d_out, kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("mlp", "embed")),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)


class MuLanModel(nnx.Module):
    """`embed_audio(windows [B, samples]) -> [B, D]`, `embed_text(ids, mask) -> [B, D]`; unit vectors."""

    def __init__(self, cfg: MuLanConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.audio = AudioEncoder(cfg.audio, rngs)
        self.text = build_text_encoder(cfg.text, rngs)
        with nnx.use_eager_sharding(False):
            self.audio_proj = _proj(rngs, cfg.audio.out_features, cfg.embed_dim)
            self.text_proj = _proj(rngs, cfg.text.hidden, cfg.embed_dim)
        t0 = cfg.init_temperature if cfg.loss == "softmax" else 0.1
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1.0 / t0), jnp.float32))
        self.logit_bias = nnx.Param(jnp.asarray(cfg.init_bias if cfg.loss == "sigmoid" else 0.0, jnp.float32))

    def embed_audio(self, windows: jax.Array) -> jax.Array:
        z = l2_normalize(self.audio_proj(self.audio(windows)))
        return with_logical_constraint(z, ("batch", "embed"))

    def embed_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        pooled = self.text(ids, mask)
        if self.cfg.freeze_text_tower:
            pooled = jax.lax.stop_gradient(pooled)
        z = l2_normalize(self.text_proj(pooled))
        return with_logical_constraint(z, ("batch", "embed"))

    def logit_scale_value(self) -> jax.Array:
        # Clipped at 100 (CLIP), so the temperature cannot collapse to zero on a tiny dataset.
        return jnp.minimum(self.logit_scale[...], math.log(100.0))
