"""w2v-BERT (Chung et al. 2021) in Flax NNX: the feature extractor behind MusicLM's semantic tokens.

    wave [B, N] @16 kHz -> log-mel [B, 4T, n_mels] @100 Hz -> conv subsampling (2 x stride 2) -> [B, T, D] @25 Hz
        -> contrastive module (conformer layers)  -- wav2vec 2.0 objective against Gumbel product-quantized targets
        -> MLM module (conformer layers)          -- predicts the quantizer's ids of the masked frames

Training masks spans of the subsampled features (a learned mask vector replaces them); the quantizer sees the
unmasked features. Losses: contrastive (InfoNCE over the other masked frames of the same clip as distractors, minus
those with the positive's own code), the codebook diversity loss, and the MLM cross-entropy.

Semantic features are the output of layer `feature_layer` of the MLM module (paper: 7), one vector per 640 samples
(25 Hz). With `attention_context` set, self-attention sees only +-context frames, so every output frame has a finite
receptive field (`receptive_field_frames`) and chunked extraction equals whole-clip extraction away from chunk
borders. Per-frame normalisation only (no utterance statistics), for the same reason.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.audio.features import log_mel_spectrogram
from musiclm_jax.train.partitioning import with_logical_constraint

SUBSAMPLING = 4  # two stride-2 convolutions: 100 Hz mel frames -> 25 Hz
ACT = ("batch", "length", "embed")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class W2vBertConfig:
    """Hyper-parameters; the defaults are the paper's (w2v-BERT XL, ~600M, 24 conformer layers at 25 Hz)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160            # 100 Hz mel frames; x4 subsampling -> 25 Hz
    n_mels: int = 80
    subsample_channels: int = 128
    embed_dim: int = 1024
    num_heads: int = 8
    mlp_dim: int = 4096
    conv_kernel: int = 5             # conformer depthwise convolution width
    num_contrastive_layers: int = 12
    num_mlm_layers: int = 12
    attention_context: int | None = None  # +-frames self-attention sees; None = full attention (the paper)
    num_codebooks: int = 1           # product-quantizer groups (G)
    codebook_size: int = 1024        # entries per group (V)
    codevector_dim: int = 1024       # of all groups together
    proj_dim: int = 768              # contrastive space
    mask_prob: float = 0.065         # probability a frame starts a masked span
    mask_span: int = 10
    contrastive_temperature: float = 0.1
    gumbel_temperature: float = 2.0
    diversity_weight: float = 0.1
    mlm_weight: float = 1.0
    dropout_rate: float = 0.1
    feature_layer: int = 7           # layer of the MLM module whose output gives the semantic features
    dtype: str = "float32"           # activations (bfloat16 on accelerators)

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "subsample_channels", "embed_dim", "num_heads",
                     "mlp_dim", "conv_kernel", "num_contrastive_layers", "num_codebooks", "codebook_size",
                     "codevector_dim", "proj_dim", "mask_span"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"W2vBertConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"W2vBertConfig: embed_dim {self.embed_dim} must be divisible by num_heads "
                             f"{self.num_heads}")
        if self.codevector_dim % self.num_codebooks:
            raise ValueError("W2vBertConfig: codevector_dim must be divisible by num_codebooks")
        if self.n_mels % SUBSAMPLING:
            raise ValueError(f"W2vBertConfig: n_mels ({self.n_mels}) must be a multiple of {SUBSAMPLING}")
        if not 0 <= self.feature_layer <= self.num_mlm_layers:
            raise ValueError(f"W2vBertConfig.feature_layer={self.feature_layer} must be in [0, num_mlm_layers="
                             f"{self.num_mlm_layers}] (0 = the contrastive module's output)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"W2vBertConfig.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.attention_context is not None and self.attention_context < 1:
            raise ValueError("W2vBertConfig.attention_context must be >= 1 or None (full attention)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"W2vBertConfig.dtype={self.dtype!r}: use 'float32' or 'bfloat16'")

    @property
    def samples_per_frame(self) -> int:
        return self.hop_length * SUBSAMPLING

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.samples_per_frame

    def receptive_field_frames(self, layer: int | None = None) -> int | None:
        """Frames either side an output frame of MLM layer `layer` depends on (None: unbounded)."""
        if self.attention_context is None:
            return None
        depth = self.num_contrastive_layers + (self.feature_layer if layer is None else layer)
        per_layer = self.attention_context + self.conv_kernel // 2
        return depth * per_layer + 2  # +2: the subsampling convolutions and the mel window


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_mels=32, subsample_channels=8, embed_dim=32, num_heads=2, mlp_dim=64, conv_kernel=3,
                 num_contrastive_layers=2, num_mlm_layers=2, attention_context=8, num_codebooks=2,
                 codebook_size=16, codevector_dim=32, proj_dim=32, mask_prob=0.1, mask_span=4,
                 dropout_rate=0.0, feature_layer=1, gumbel_temperature=1.0),
    "paper": dict(),
}
# Small: the tiny layout, 80 mel bands, d=64 (gin/models/w2v_bert_small.gin).
_PRESETS["small"] = dict(_PRESETS["tiny"], n_mels=80, subsample_channels=32, embed_dim=64, num_heads=4,
                              mlp_dim=128, codevector_dim=64, proj_dim=64)


def preset(name: str, **overrides) -> W2vBertConfig:
    """`preset('tiny' | 'small' | 'paper', **field_overrides)`."""
    if name not in _PRESETS:
        raise ValueError(f"unknown w2v-BERT preset {name!r}: use one of {sorted(_PRESETS)}")
    return W2vBertConfig(**{**_PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------------
# Layers.


def _init(axes, init=nnx.initializers.lecun_normal()):
    return nnx.with_partitioning(init, axes)


class Dense(nnx.Module):
    """x @ W + b with logical axis names on both; computes in `dtype`."""

    def __init__(self, din: int, dout: int, axes: tuple, *, dtype, rngs: nnx.Rngs, bias: bool = True):
        self.kernel = nnx.Param(_init(axes)(rngs.params(), (din, dout)))
        self.bias = nnx.Param(_init(axes[1:], nnx.initializers.zeros_init())(rngs.params(), (dout,))) if bias \
            else None
        self.dtype = dtype

    def __call__(self, x):
        y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
        return y + self.bias[...].astype(self.dtype) if self.bias is not None else y


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs, axis_name: str = "embed", eps: float = 1e-5):
        self.scale = nnx.Param(_init((axis_name,), nnx.initializers.ones_init())(rngs.params(), (dim,)))
        self.bias = nnx.Param(_init((axis_name,), nnx.initializers.zeros_init())(rngs.params(), (dim,)))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def dropout(x, rate: float, key):
    if rate == 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _split(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


class FeedForward(nnx.Module):
    def __init__(self, cfg: W2vBertConfig, dtype, rngs: nnx.Rngs):
        self.norm = LayerNorm(cfg.embed_dim, rngs=rngs)
        self.wi = Dense(cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.wo = Dense(cfg.mlp_dim, cfg.embed_dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.rate = cfg.dropout_rate

    def __call__(self, x, key=None):
        k1, k2 = _split(key, 2)
        h = nnx.silu(self.wi(self.norm(x)))
        h = with_logical_constraint(h, ("batch", "length", "mlp"))
        return dropout(self.wo(dropout(h, self.rate, k1)), self.rate, k2)


def local_attention_mask(length: int, context: int | None) -> jax.Array | None:
    """[1, 1, T, T] boolean mask allowing |i - j| <= context (None: no mask, full attention)."""
    if context is None:
        return None
    idx = jnp.arange(length)
    return (jnp.abs(idx[:, None] - idx[None, :]) <= context)[None, None]


class SelfAttention(nnx.Module):
    def __init__(self, cfg: W2vBertConfig, dtype, rngs: nnx.Rngs):
        d, h = cfg.embed_dim, cfg.num_heads
        self.heads, self.head_dim, self.dtype = h, d // h, dtype
        self.norm = LayerNorm(d, rngs=rngs)
        init = _init(("embed", "heads", "kv"))
        self.wq = nnx.Param(init(rngs.params(), (d, h, d // h)))
        self.wk = nnx.Param(init(rngs.params(), (d, h, d // h)))
        self.wv = nnx.Param(init(rngs.params(), (d, h, d // h)))
        self.wo = nnx.Param(_init(("heads", "kv", "embed"))(rngs.params(), (h, d // h, d)))
        self.context, self.rate = cfg.attention_context, cfg.dropout_rate

    def __call__(self, x, key=None):
        x = self.norm(x).astype(self.dtype)
        q, k, v = (jnp.einsum("btd,dhk->bthk", x, w[...].astype(self.dtype)) for w in (self.wq, self.wk, self.wv))
        q = with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
        mask = local_attention_mask(x.shape[1], self.context)
        if mask is not None:
            logits = jnp.where(mask, logits, -1e9)
        probs = jax.nn.softmax(logits, -1).astype(self.dtype)
        out = jnp.einsum("bhqs,bshk->bqhk", probs, v)
        return dropout(jnp.einsum("bqhk,hkd->bqd", out, self.wo[...].astype(self.dtype)), self.rate, key)


class ConvModule(nnx.Module):
    """Conformer convolution module: pointwise + GLU, depthwise conv, norm, swish, pointwise.
    LayerNorm replaces the original BatchNorm: no batch statistics, so tokens do not depend on batch neighbours."""

    def __init__(self, cfg: W2vBertConfig, dtype, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.norm = LayerNorm(d, rngs=rngs)
        self.pw1 = Dense(d, 2 * d, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.depthwise = nnx.Param(_init(("conv", "embed"))(rngs.params(), (cfg.conv_kernel, d)))
        self.conv_norm = LayerNorm(d, rngs=rngs)
        self.pw2 = Dense(d, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.kernel, self.rate, self.dtype = cfg.conv_kernel, cfg.dropout_rate, dtype

    def __call__(self, x, key=None):
        a, b = jnp.split(self.pw1(self.norm(x)), 2, axis=-1)
        h = a * jax.nn.sigmoid(b)
        pad = self.kernel // 2
        hp = jnp.pad(h, ((0, 0), (pad, self.kernel - 1 - pad), (0, 0)))
        w = self.depthwise[...].astype(self.dtype)
        h = sum(hp[:, i:i + h.shape[1]] * w[i] for i in range(self.kernel))
        h = nnx.silu(self.conv_norm(h))
        return dropout(self.pw2(h), self.rate, key)


class ConformerBlock(nnx.Module):
    def __init__(self, cfg: W2vBertConfig, dtype, rngs: nnx.Rngs):
        self.ff1 = FeedForward(cfg, dtype, rngs)
        self.attn = SelfAttention(cfg, dtype, rngs)
        self.conv = ConvModule(cfg, dtype, rngs)
        self.ff2 = FeedForward(cfg, dtype, rngs)
        self.norm = LayerNorm(cfg.embed_dim, rngs=rngs)

    def __call__(self, x, key=None):
        k1, k2, k3, k4 = _split(key, 4)
        x = x + 0.5 * self.ff1(x, k1)
        x = x + self.attn(x, k2)
        x = x + self.conv(x, k3)
        x = x + 0.5 * self.ff2(x, k4)
        return with_logical_constraint(self.norm(x), ACT)


class ConvSubsampling(nnx.Module):
    """Log-mel [B, 4T, M] -> [B, T, D]: two 3x3 stride-2 Conv2d + ReLU, flatten (freq x channels), project."""

    def __init__(self, cfg: W2vBertConfig, dtype, rngs: nnx.Rngs):
        c = cfg.subsample_channels
        axes = (None, None, None, "conv")
        self.conv1 = nnx.Conv(1, c, (3, 3), strides=(2, 2), padding="SAME", kernel_init=_init(axes),
                              bias_init=_init(("conv",), nnx.initializers.zeros_init()), rngs=rngs)
        self.conv2 = nnx.Conv(c, c, (3, 3), strides=(2, 2), padding="SAME", kernel_init=_init(axes),
                              bias_init=_init(("conv",), nnx.initializers.zeros_init()), rngs=rngs)
        self.proj = Dense(c * cfg.n_mels // SUBSAMPLING, cfg.embed_dim, ("conv", "embed"), dtype=dtype, rngs=rngs)
        self.norm = LayerNorm(cfg.embed_dim, rngs=rngs)

    def __call__(self, mel):
        h = nnx.relu(self.conv1(mel[..., None]))
        h = nnx.relu(self.conv2(h))
        b, t, f, c = h.shape
        return with_logical_constraint(self.norm(self.proj(h.reshape(b, t, f * c))), ACT)


class GumbelProductQuantizer(nnx.Module):
    """G groups of V code vectors; training picks one per group with straight-through Gumbel-softmax."""

    def __init__(self, cfg: W2vBertConfig, rngs: nnx.Rngs):
        g, v = cfg.num_codebooks, cfg.codebook_size
        self.groups, self.entries = g, v
        self.logits = Dense(cfg.embed_dim, g * v, ("embed", "codebook"), dtype=jnp.float32, rngs=rngs)
        self.codebook = nnx.Param(_init((None, "codebook", None), nnx.initializers.normal(1.0))(
            rngs.params(), (g, v, cfg.codevector_dim // g)))
        self.proj = Dense(cfg.codevector_dim, cfg.proj_dim, (None, "embed"), dtype=jnp.float32, rngs=rngs)
        self.tau = cfg.gumbel_temperature

    def __call__(self, x, key=None):
        """-> (quantized [B, T, proj_dim], ids [B, T, G], soft probabilities [B, T, G, V])."""
        b, t, _ = x.shape
        logits = self.logits(x.astype(jnp.float32)).reshape(b, t, self.groups, self.entries)
        probs = jax.nn.softmax(logits, -1)
        ids = jnp.argmax(logits, -1).astype(jnp.int32)
        hard = jax.nn.one_hot(ids, self.entries, dtype=jnp.float32)
        if key is not None:  # training: straight-through Gumbel-softmax sample
            gumbel = -jnp.log(-jnp.log(jax.random.uniform(key, logits.shape, minval=1e-9, maxval=1.0)))
            soft = jax.nn.softmax((logits + gumbel) / self.tau, -1)
            sample = jnp.argmax(soft, -1)
            hard = jax.nn.one_hot(sample, self.entries, dtype=jnp.float32)
            hard = soft + jax.lax.stop_gradient(hard - soft)
        codes = jnp.einsum("btgv,gvd->btgd", hard, self.codebook[...]).reshape(b, t, -1)
        return self.proj(codes), ids, probs


def span_mask(key, batch: int, length: int, prob: float, span: int) -> jax.Array:
    """Boolean [B, T]: each frame starts a masked span of `span` frames with probability `prob`; every row gets
    at least one span (a clip with nothing masked would have no loss)."""
    k1, k2 = jax.random.split(key)
    starts = jax.random.bernoulli(k1, prob, (batch, length))
    forced = jax.nn.one_hot(jax.random.randint(k2, (batch,), 0, max(length - span + 1, 1)), length, dtype=bool)
    starts = starts | (forced & ~jnp.any(starts, -1, keepdims=True))
    # A frame is masked when a span started at most span-1 frames before it.
    c = jnp.cumsum(starts.astype(jnp.int32), -1)
    shifted = jnp.pad(c, ((0, 0), (span, 0)))[:, :length]
    return (c - shifted) > 0


def diversity_loss(probs: jax.Array, weights: jax.Array) -> jax.Array:
    """(G V - perplexity) / (G V) of the batch-averaged code distribution per group (wav2vec 2.0)."""
    g, v = probs.shape[-2:]
    w = weights[..., None, None]
    avg = jnp.sum(probs * w, (0, 1)) / jnp.maximum(jnp.sum(weights), 1.0)
    perplexity = jnp.exp(-jnp.sum(avg * jnp.log(avg + 1e-7), -1)).sum()
    return (g * v - perplexity) / (g * v)


def contrastive_loss(context: jax.Array, targets: jax.Array, ids: jax.Array, mask: jax.Array,
                     temperature: float) -> tuple[jax.Array, jax.Array]:
    """InfoNCE at masked frames: the positive is the frame's own quantized target; distractors are the other masked
    frames of the same clip whose code differs. -> (loss sum, accuracy sum)."""
    c = context / (jnp.linalg.norm(context, axis=-1, keepdims=True) + 1e-6)
    q = targets / (jnp.linalg.norm(targets, axis=-1, keepdims=True) + 1e-6)
    sims = jnp.einsum("btd,bsd->bts", c, q) / temperature           # [B, T(query), T(candidate)]
    same_code = jnp.all(ids[:, :, None, :] == ids[:, None, :, :], -1)
    eye = jnp.eye(mask.shape[1], dtype=bool)[None]
    valid = (mask[:, None, :] & ~same_code) | eye
    sims = jnp.where(valid, sims, -1e9)
    logp = jax.nn.log_softmax(sims, -1)
    pos = jnp.diagonal(logp, axis1=1, axis2=2)
    correct = jnp.argmax(sims, -1) == jnp.arange(mask.shape[1])[None]
    m = mask.astype(jnp.float32)
    return -jnp.sum(pos * m), jnp.sum(correct * m)


class W2vBert(nnx.Module):
    def __init__(self, cfg: W2vBertConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        self.subsample = ConvSubsampling(cfg, dtype, rngs)
        self.mask_embedding = nnx.Param(_init(("embed",), nnx.initializers.normal(0.02))(
            rngs.params(), (cfg.embed_dim,)))
        self.quantizer = GumbelProductQuantizer(cfg, rngs)
        self.contrastive_layers = nnx.List([ConformerBlock(cfg, dtype, rngs)
                                            for _ in range(cfg.num_contrastive_layers)])
        self.context_proj = Dense(cfg.embed_dim, cfg.proj_dim, ("embed", None), dtype=jnp.float32, rngs=rngs)
        self.mlm_layers = nnx.List([ConformerBlock(cfg, dtype, rngs) for _ in range(cfg.num_mlm_layers)])
        self.mlm_head = Dense(cfg.embed_dim, cfg.num_codebooks * cfg.codebook_size, ("embed", "codebook"),
                              dtype=jnp.float32, rngs=rngs)

    # -- front end -------------------------------------------------------------------------------------------------
    def log_mel(self, wave: jax.Array) -> jax.Array:
        """[B, N] -> [B, 4 T, n_mels] with T = N // 640: exactly 4 mel frames per output frame."""
        cfg = self.cfg
        t = cfg.num_frames(wave.shape[-1])
        if t < 1:
            raise ValueError(f"audio of {wave.shape[-1]} samples is shorter than one w2v-BERT frame "
                             f"({cfg.samples_per_frame} samples): give longer audio")
        mel = log_mel_spectrogram(wave, cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        return mel[:, :t * SUBSAMPLING]

    def frontend(self, wave: jax.Array) -> jax.Array:
        return self.subsample(self.log_mel(wave))

    # -- stacks ----------------------------------------------------------------------------------------------------
    def _run(self, layers, x, key=None):
        keys = _split(key, len(layers))
        for layer, k in zip(layers, keys):
            x = layer(x, k)
        return x

    def features(self, wave: jax.Array, layer: int | None = None) -> jax.Array:
        """Semantic features [B, T, D] at 25 Hz: output of MLM-module layer `layer` (default cfg.feature_layer;
        0 = contrastive module output). Deterministic (no masking, no dropout)."""
        layer = self.cfg.feature_layer if layer is None else layer
        if not 0 <= layer <= self.cfg.num_mlm_layers:
            raise ValueError(f"feature layer {layer} must be in [0, {self.cfg.num_mlm_layers}]")
        x = self._run(self.contrastive_layers, self.frontend(wave))
        return self._run(self.mlm_layers[:layer], x).astype(jnp.float32)

    def __call__(self, wave: jax.Array, key: jax.Array, train: bool = True) -> tuple[jax.Array, dict, jax.Array]:
        """Training objective on waves [B, N] -> (loss summed over masked frames, metric sums, masked count).
        Metric sums are over masked frames too, except `diversity` which is per batch (weighted by the count)."""
        cfg = self.cfg
        k_mask, k_gumbel, k_ctr, k_mlm = jax.random.split(key, 4)
        feats = self.frontend(wave)
        b, t, _ = feats.shape
        mask = span_mask(k_mask, b, t, cfg.mask_prob, cfg.mask_span)
        targets, ids, probs = self.quantizer(feats, k_gumbel if train else None)
        x = jnp.where(mask[..., None], self.mask_embedding[...].astype(feats.dtype), feats)
        x = self._run(self.contrastive_layers, x, k_ctr if train else None)
        ctr_sum, acc_sum = contrastive_loss(self.context_proj(x.astype(jnp.float32)), targets, ids, mask,
                                            cfg.contrastive_temperature)
        y = self._run(self.mlm_layers, x, k_mlm if train else None)
        logits = self.mlm_head(y.astype(jnp.float32)).reshape(b, t, cfg.num_codebooks, cfg.codebook_size)
        logp = jax.nn.log_softmax(logits, -1)
        tgt = jax.lax.stop_gradient(ids)
        nll = -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0].mean(-1)   # mean over groups
        m = mask.astype(jnp.float32)
        n = jnp.sum(m)
        mlm_sum = jnp.sum(nll * m)
        mlm_acc = jnp.sum(jnp.mean(jnp.argmax(logits, -1) == tgt, -1) * m)
        div = diversity_loss(probs, jnp.ones((b, t), jnp.float32))
        loss = ctr_sum + cfg.mlm_weight * mlm_sum + cfg.diversity_weight * div * n
        metrics = {"loss": loss, "contrastive_loss": ctr_sum, "mlm_loss": mlm_sum, "diversity_loss": div * n,
                   "contrastive_accuracy": acc_sum, "mlm_accuracy": mlm_acc, "masked_fraction": n / (b * t) * n}
        return loss, metrics, n


def num_params(model_or_state) -> int:
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def new_model(cfg: W2vBertConfig, rngs: nnx.Rngs) -> W2vBert:
    """Builds the model with logical annotations only (placement is the trainer's; no mesh needed)."""
    with nnx.use_eager_sharding(False):
        return W2vBert(cfg, rngs)


def abstract_model(cfg: W2vBertConfig) -> W2vBert:
    """The model's structure with ShapeDtypeStruct leaves (nothing allocated): for sizes and sharding plans."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: W2vBert(cfg, nnx.Rngs(0)))
