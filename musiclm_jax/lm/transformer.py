"""Decoder-only Transformer for the stage LMs: T5-style relative position bias, pre-RMSNorm, prefix LM, KV cache.

Parameters are float32 (``param_dtype``) and carry logical axis names (``vocab``, ``embed``, ``heads``, ``kv``,
``mlp``, ``relpos_buckets``); activations run in ``dtype`` (bfloat16 by default) and are constrained by logical name
through :func:`musiclm_jax.train.partitioning.with_logical_constraint`.

Sharding at init: every parameter is created with ``nnx.use_eager_sharding(False)`` in effect, so building a model
never needs a mesh (flax 0.12 would otherwise try to place each annotated parameter at creation and raise outside
a mesh). To build a sharded model, take the logical specs from ``nnx.get_partition_spec(nnx.state(abstract))``
(they hold logical names, e.g. ``P('embed', 'mlp')``), map them to mesh axes with ``partitioning.logical_to_spec``,
and create the model inside ``jax.jit(..., out_shardings=...)``. See :func:`logical_param_specs`.

Layers are a Python loop (``model.layers[i]``) or, with ``scan_layers=True``, one ``lax.scan`` over stacked layer
params (leading logical axis ``layers``) and a stacked KV cache: compile time no longer grows with depth (use it for
the 24-layer configs); the outputs are the same.

Attention masks are built from three per-token quantities, the same for a full forward and for cached decoding:
  * slot: index in the sequence (or cache); causality is ``k_slot <= q_slot``;
  * position: index inside the token's own segment (restarts per packed segment); the relative bias uses
    ``k_pos - q_pos``; a position of -1 marks a padding key that nothing may attend to;
  * segment id: attention stays inside a segment (packing).
Bidirectional prefix: a query and a key that are both flagged bidirectional may attend either way (within their
segment). The flag is per token (``bidirectional``: packed segments with prefixes of their own lengths) or
``position < prefix_len`` (one prefix length per row, as the decoder uses it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from musiclm_jax.train.partitioning import logical_to_spec, with_logical_constraint

_ACTIVATIONS = {"gelu": nnx.gelu, "relu": nnx.relu, "silu": nnx.silu, "swish": nnx.silu}
_DTYPES = ("float32", "bfloat16", "float16")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters; the defaults are the paper's stage LM (24 layers, 16 heads, d_model 1024, d_ff 4096)."""

    vocab_size: int
    num_layers: int = 24
    num_heads: int = 16
    head_dim: int = 64
    d_model: int = 1024
    d_ff: int = 4096
    dropout_rate: float = 0.1
    gated_mlp: bool = True          # T5 v1.1 style: act(x W0) * (x W1)
    activation: str = "gelu"
    relpos_num_buckets: int = 32
    relpos_max_distance: int = 128
    relpos_bidirectional: bool = True  # needed by the prefix (it attends forward); causal keys use half the table
    shared_relpos: bool = True      # one bias table for all layers (T5) or one per layer
    scan_layers: bool = False       # lax.scan over stacked layers (leading 'layers' param axis): depth-free compiles
    # Rematerialisation of each scanned layer in training (MaxText's remat policies): 'none' keeps every activation,
    # 'full' keeps only each layer's input and recomputes the rest in the backward pass, 'dots' keeps the matmul
    # outputs. Memory for compute: the paper-size model fits a bigger batch. Needs scan_layers.
    remat: str = "none"
    tie_embeddings: bool = False    # output projection = input embedding^T / sqrt(d_model)
    dtype: str = "bfloat16"         # activations
    param_dtype: str = "float32"
    max_len: int = 2048             # default KV-cache length
    layer_norm_eps: float = 1e-6
    # Trained with time-aligned conditioning: every call passes `aligned` ids (see Transformer.__call__), e.g. the
    # coarse stage's semantic token at each target's time (lm/stages.py StageLayout.aligned_ids).
    aligned_inputs: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "num_heads", "head_dim", "d_model", "d_ff", "max_len",
                     "relpos_num_buckets", "relpos_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"TransformerConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerConfig.activation={self.activation!r}: use one of {sorted(_ACTIVATIONS)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"TransformerConfig.{name}={getattr(self, name)!r}: use one of {_DTYPES}")
        if self.remat not in _REMAT_POLICIES:
            raise ValueError(f"TransformerConfig.remat={self.remat!r}: use one of {sorted(_REMAT_POLICIES)}")
        if self.remat != "none" and not self.scan_layers:
            raise ValueError("TransformerConfig.remat needs scan_layers=True (it wraps the scanned layer)")
        buckets = self.relpos_num_buckets // (2 if self.relpos_bidirectional else 1)
        if buckets < 2 or self.relpos_max_distance <= buckets // 2:
            raise ValueError("TransformerConfig: relpos_max_distance must exceed half the (per-direction) "
                             f"bucket count; got {self.relpos_max_distance} with {self.relpos_num_buckets} buckets")


_REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                   "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


# Presets. The vocabulary of `large` covers a coarse-stage layout (12x1024 MuLan + 1024 semantic + 4x1024 acoustic
# tokens, rounded up to a multiple of 128 for specials); the stage models pass their own vocab_size.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=64, num_layers=2, num_heads=2, head_dim=8, d_model=16, d_ff=32, relpos_num_buckets=8,
                 relpos_max_distance=16, max_len=64, dropout_rate=0.0),
    "base": dict(vocab_size=17536, num_layers=12, num_heads=12, head_dim=64, d_model=768, d_ff=2048),
    "large": dict(vocab_size=17536),
}


def preset(name: str, **overrides) -> TransformerConfig:
    """`preset('tiny' | 'base' | 'large', **field_overrides)`."""
    if name not in _PRESETS:
        raise ValueError(f"unknown transformer preset {name!r}: use one of {sorted(_PRESETS)}")
    return TransformerConfig(**{**_PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------------------------
# Masks, positions, relative position buckets.


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Index of every token inside its segment: [1,1,2,2,2] -> [0,1,0,1,2]."""
    idx = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[..., :1], bool),
                              segment_ids[..., 1:] != segment_ids[..., :-1]], axis=-1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=segment_ids.ndim - 1)
    return idx - start_idx


def attention_mask(q_slot, k_slot, q_pos, k_pos, q_seg=None, k_seg=None, prefix_len=None, q_bidir=None,
                   k_bidir=None) -> jax.Array:
    """Boolean [b|1, 1, q, k] mask (True = may attend). Slots are [q]/[k]; positions/segments/bidirectional flags
    are [b|1, q|k]; `prefix_len` [b] flags the positions < prefix_len instead of q_bidir/k_bidir."""
    causal = k_slot[None, None, :] <= q_slot[None, :, None]
    if prefix_len is not None:
        p = jnp.asarray(prefix_len, jnp.int32).reshape(-1, 1)
        q_bidir, k_bidir = q_pos < p, k_pos < p
    if q_bidir is not None:
        causal = causal | (q_bidir[:, :, None] & k_bidir[:, None, :])
    allowed = causal & (k_pos[:, None, :] >= 0)
    if q_seg is not None:
        allowed = allowed & (q_seg[:, :, None] == k_seg[:, None, :])
    return allowed[:, None]


def relative_position_bucket(rel: jax.Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """T5 bucketing of ``rel = k_pos - q_pos``: exact buckets for small distances, log-spaced up to max_distance."""
    n = -rel
    out = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        out = out + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    exact = num_buckets // 2
    # log-spaced buckets; the max(n, 1) only avoids log(0) in the branch `where` discards.
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return out + jnp.where(n < exact, n, large)


# ----------------------------------------------------------------------------------------------------------------
# Layers.


def _param(rngs: nnx.Rngs, init, shape, names, dtype) -> nnx.Param:
    return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, dtype))


def _kernel_init(in_axis, out_axis):
    return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in float32, output in the activation dtype."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.layer_norm_eps
        self.dtype = jnp.dtype(cfg.dtype)
        self.scale = _param(rngs, nnx.initializers.ones, (cfg.d_model,), ("embed",), jnp.dtype(cfg.param_dtype))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def relpos_buckets(cfg: TransformerConfig, q_pos, k_pos) -> jax.Array:
    """[b|1, q, k] bucket ids for query/key positions [b|1, q] and [b|1, k]."""
    return relative_position_bucket(k_pos[:, None, :] - q_pos[:, :, None], bidirectional=cfg.relpos_bidirectional,
                                    num_buckets=cfg.relpos_num_buckets, max_distance=cfg.relpos_max_distance)


class RelativePositionBias(nnx.Module):
    """Learned [buckets, heads] table turned into an additive [b|1, heads, q, k] attention bias."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.table = _param(rngs, nnx.initializers.normal(0.1), (cfg.relpos_num_buckets, cfg.num_heads),
                            ("relpos_buckets", "heads"), jnp.dtype(cfg.param_dtype))

    def __call__(self, buckets):
        bias = jnp.take(self.table[...], buckets, axis=0)          # [b, q, k, heads]
        return jnp.transpose(bias, (0, 3, 1, 2)).astype(jnp.float32)


class Attention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        shape_in = (cfg.d_model, cfg.num_heads, cfg.head_dim)
        self.wq = _param(rngs, _kernel_init(0, (1, 2)), shape_in, ("embed", "heads", "kv"), pd)
        self.wk = _param(rngs, _kernel_init(0, (1, 2)), shape_in, ("embed", "heads", "kv"), pd)
        self.wv = _param(rngs, _kernel_init(0, (1, 2)), shape_in, ("embed", "heads", "kv"), pd)
        self.wo = _param(rngs, _kernel_init((0, 1), 2), (cfg.num_heads, cfg.head_dim, cfg.d_model),
                         ("heads", "kv", "embed"), pd)

    def __call__(self, x, mask, bias, kv_cache=None, index=None):
        """x [b, q, d] -> [b, q, d]. With `kv_cache=(k, v)` [b, T, h, d], new keys go to slots index..index+q-1."""
        dt = jnp.dtype(self.cfg.dtype)
        axes = ("batch", "length", "heads", "kv")
        q = with_logical_constraint(jnp.einsum("bld,dhk->blhk", x, self.wq[...].astype(dt)), axes)
        k = with_logical_constraint(jnp.einsum("bld,dhk->blhk", x, self.wk[...].astype(dt)), axes)
        v = with_logical_constraint(jnp.einsum("bld,dhk->blhk", x, self.wv[...].astype(dt)), axes)
        if kv_cache is not None:
            k_all, v_all = kv_cache
            k = jax.lax.dynamic_update_slice_in_dim(k_all, k.astype(k_all.dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(v_all, v.astype(v_all.dtype), index, axis=1)
            kv_cache = (k, v)
        q = q * jnp.asarray(self.cfg.head_dim ** -0.5, dt)
        logits = jnp.einsum("bqhk,bthk->bhqt", q, k.astype(dt)).astype(jnp.float32) + bias
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        out = jnp.einsum("bhqt,bthk->bqhk", probs, v.astype(dt))
        out = jnp.einsum("bqhk,hkd->bqd", out, self.wo[...].astype(dt))
        return with_logical_constraint(out, ("batch", "length", "embed")), kv_cache


class MLP(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.wi = _param(rngs, _kernel_init(0, 1), (cfg.d_model, cfg.d_ff), ("embed", "mlp"), pd)
        self.wi_gate = (_param(rngs, _kernel_init(0, 1), (cfg.d_model, cfg.d_ff), ("embed", "mlp"), pd)
                        if cfg.gated_mlp else None)
        self.wo = _param(rngs, _kernel_init(0, 1), (cfg.d_ff, cfg.d_model), ("mlp", "embed"), pd)

    def __call__(self, x):
        dt = jnp.dtype(self.cfg.dtype)
        act = _ACTIVATIONS[self.cfg.activation]
        h = act(x @ self.wi[...].astype(dt))
        if self.wi_gate is not None:
            h = h * (x @ self.wi_gate[...].astype(dt))
        h = with_logical_constraint(h, ("batch", "length", "mlp"))
        return with_logical_constraint(h @ self.wo[...].astype(dt), ("batch", "length", "embed"))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.relpos = None if cfg.shared_relpos else RelativePositionBias(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)

    def __call__(self, x, mask, bias_or_buckets, *, deterministic, rngs=None, kv_cache=None, index=None):
        bias = bias_or_buckets if self.relpos is None else self.relpos(bias_or_buckets)
        h, kv_cache = self.attn(self.attn_norm(x), mask, bias, kv_cache, index)
        x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
        h = self.mlp(self.mlp_norm(x))
        x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
        return with_logical_constraint(x, ("batch", "length", "embed")), kv_cache


def _stacked_layers(cfg: TransformerConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """num_layers DecoderLayers as one module whose params carry a leading 'layers' axis (for lax.scan)."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(layer_rngs):
        return DecoderLayer(cfg, rngs=layer_rngs)

    return make(rngs)


# ----------------------------------------------------------------------------------------------------------------
# The model.


class Transformer(nnx.Module):
    """Decoder-only LM. ``model(tokens, prefix_len=..., segment_ids=...) -> float32 logits [b, l, vocab]``.

    Cached decoding: ``cache = model.init_cache(batch)``, then ``logits, cache = model.extend(tokens, cache,
    positions=...)`` for the prompt (prefill) and for every new token (see ``musiclm_jax.lm.decoding``).
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        with nnx.use_eager_sharding(False):  # annotate only; placement is the caller's (see module docstring)
            self.embed = _param(rngs, nnx.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model),
                                ("vocab", "embed"), pd)
            self.relpos = RelativePositionBias(cfg, rngs=rngs) if cfg.shared_relpos else None
            self.layers = (_stacked_layers(cfg, rngs) if cfg.scan_layers
                           else nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)]))
            self.final_norm = RMSNorm(cfg, rngs=rngs)
            self.logits_kernel = None if cfg.tie_embeddings else _param(
                rngs, _kernel_init(0, 1), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pd)
            self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
            # Created last and zero: at init an aligned model is the plain model of the same seed, and the aligned
            # ids only count once training finds them useful (sharing the token table slowed training: 4.42 vs
            # 3.57 validation loss after 2,000 coarse steps).
            self.aligned_embed = _param(rngs, nnx.initializers.zeros, (cfg.vocab_size, cfg.d_model),
                                        ("vocab", "embed"), pd) if cfg.aligned_inputs else None

    # -- shared body --------------------------------------------------------------------------------------------
    def _check_aligned(self, aligned, tokens):
        if self.cfg.aligned_inputs and aligned is None:
            raise ValueError("this LM was trained with time-aligned conditioning (TransformerConfig.aligned_inputs): "
                             "pass aligned= ids, e.g. from lm.stages.StageLayout.aligned_ids")
        if not self.cfg.aligned_inputs and aligned is not None:
            raise ValueError("aligned= ids were passed to an LM trained without them (TransformerConfig.aligned_inputs "
                             "is False)")
        if aligned is not None and (aligned.shape[:2] != tokens.shape or aligned.ndim not in (2, 3)):
            raise ValueError(f"aligned shape {aligned.shape} must be tokens shape {tokens.shape} (one id per token) "
                             "or that + [channels]")

    def _body(self, tokens, mask, q_pos, k_pos, *, deterministic, rngs=None, cache=None, aligned=None):
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        x = jnp.take(self.embed[...].astype(dt), tokens, axis=0)
        if aligned is not None:
            extra = jnp.take(self.aligned_embed[...].astype(dt), jnp.maximum(aligned, 0), axis=0)
            extra = jnp.where(aligned[..., None] >= 0, extra, 0)
            x = x + (extra.sum(axis=2) if aligned.ndim == 3 else extra)   # channels: several ids, summed
        x = with_logical_constraint(x, ("batch", "length", "embed"))
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        buckets = relpos_buckets(cfg, q_pos, k_pos)
        shared_bias = self.relpos(buckets) if self.relpos is not None else buckets
        index = None if cache is None else cache["index"]
        if cfg.scan_layers:
            x, new_k, new_v = self._scan(x, mask, shared_bias, deterministic=deterministic, rngs=rngs, cache=cache)
        else:
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                kv = None if cache is None else (cache["k"][i], cache["v"][i])
                x, kv = layer(x, mask, shared_bias, deterministic=deterministic, rngs=rngs, kv_cache=kv, index=index)
                if kv is not None:
                    new_k.append(kv[0])
                    new_v.append(kv[1])
        x = self.final_norm(x)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        if cfg.tie_embeddings:
            logits = jnp.einsum("bld,vd->blv", x, self.embed[...].astype(dt)) / jnp.sqrt(cfg.d_model).astype(dt)
        else:
            logits = x @ self.logits_kernel[...].astype(dt)
        logits = with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        return logits, (new_k, new_v)

    def _scan(self, x, mask, bias, *, deterministic, rngs, cache):
        """The layer stack as one lax.scan over the stacked layer state (and the stacked cache)."""
        graphdef, state = nnx.split(self.layers)
        n = self.cfg.num_layers
        keys = None  # call-time dropout rngs: one key per layer (an outer Rngs cannot advance inside the scan)
        if rngs is not None and not deterministic and self.cfg.dropout_rate > 0:
            keys = jax.random.split(rngs.dropout(), n)
        kv = None if cache is None else (cache["k"], cache["v"])
        index = None if cache is None else cache["index"]

        # Only the layers' own dropout streams change (when used): scan them out, never a copy of the params.
        own_streams = not deterministic and self.cfg.dropout_rate > 0 and keys is None

        def body(h, xs):
            layer_state, key, layer_kv = xs
            layer = nnx.merge(graphdef, layer_state)
            h, layer_kv = layer(h, mask, bias, deterministic=deterministic,
                                rngs=None if key is None else nnx.Rngs(dropout=key), kv_cache=layer_kv, index=index)
            return h, (nnx.state(layer, nnx.RngState) if own_streams else None, layer_kv)

        if self.cfg.remat != "none" and cache is None:  # training / teacher forcing (decoding keeps no activations)
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        x, (rng_state, kv) = jax.lax.scan(body, x, (state, keys, kv))
        if own_streams:
            nnx.update(self.layers, rng_state)
        return (x, None, None) if kv is None else (x, kv[0], kv[1])

    def __call__(self, tokens: jax.Array, *, prefix_len: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 bidirectional: jax.Array | None = None, aligned: jax.Array | None = None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        """tokens [b, l] int32 -> logits float32 [b, l, vocab].

        `prefix_len` [b]: bidirectional prefix length. `bidirectional` [b, l] bool (instead of prefix_len): the
        tokens of each segment's bidirectional prefix. `segment_ids` [b, l]: packed segments (positions restart in
        each). `positions` [b, l] (instead of segment_ids): explicit positions, -1 for padding never attended
        (left-padded rows, as the decoder builds them). `aligned` [b, l] int (models with
        `aligned_inputs` only): a second id per token whose embedding is added to the token's, -1 for none; or
        [b, l, channels]: several such ids per token (e.g. beat phase and melody pitch class), all added.
        """
        if tokens.ndim != 2:
            raise ValueError(f"Transformer expects tokens of shape [batch, length], got {tokens.shape}")
        self._check_aligned(aligned, tokens)
        for name, arr in (("segment_ids", segment_ids), ("positions", positions), ("bidirectional", bidirectional)):
            if arr is not None and arr.shape != tokens.shape:
                raise ValueError(f"{name} shape {arr.shape} must equal tokens shape {tokens.shape}")
        if segment_ids is not None and positions is not None:
            raise ValueError("pass segment_ids (positions are derived per segment) or positions, not both")
        if prefix_len is not None and bidirectional is not None:
            raise ValueError("pass prefix_len or bidirectional, not both")
        length = tokens.shape[1]
        slots = jnp.arange(length, dtype=jnp.int32)
        seg = segment_ids
        if segment_ids is not None:
            pos = segment_positions(segment_ids)
        elif positions is not None:
            pos = positions.astype(jnp.int32)
        else:
            pos = slots[None]
        mask = attention_mask(slots, slots, pos, pos, seg, seg, prefix_len, bidirectional, bidirectional)
        logits, _ = self._body(tokens, mask, pos, pos, deterministic=deterministic, rngs=rngs, aligned=aligned)
        return logits

    # -- KV cache -----------------------------------------------------------------------------------------------
    def init_cache(self, batch_size: int, max_len: int | None = None, dtype: Any = None) -> dict:
        """Empty cache: per-layer keys/values [b, T, heads, head_dim], key positions [b, T] (-1 = empty), index."""
        cfg = self.cfg
        max_len = max_len or cfg.max_len
        dtype = jnp.dtype(dtype or cfg.dtype)
        shape = (batch_size, max_len, cfg.num_heads, cfg.head_dim)
        axes = ("batch", "length", "heads", "kv")
        if cfg.scan_layers:  # stacked like the layers: [num_layers, b, T, heads, head_dim]
            zeros = lambda: with_logical_constraint(jnp.zeros((cfg.num_layers, *shape), dtype), ("layers", *axes))
            k, v = zeros(), zeros()
        else:
            zeros = lambda: with_logical_constraint(jnp.zeros(shape, dtype), axes)
            k, v = [zeros() for _ in range(cfg.num_layers)], [zeros() for _ in range(cfg.num_layers)]
        return {"k": k, "v": v, "pos": jnp.full((batch_size, max_len), -1, jnp.int32),
                "index": jnp.zeros((), jnp.int32)}

    def extend(self, tokens: jax.Array, cache: dict, *, positions: jax.Array,
               prefix_len: jax.Array | None = None, aligned: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Appends `tokens` [b, q] at cache slots index..index+q-1 and returns their logits [b, q, vocab].

        `positions` [b, q]: each token's position in its row (-1 for left padding, which is then never attended).
        `aligned` [b, q]: as in `__call__`. The caller keeps index + q <= cache length (writes past the end are
        clipped by XLA, silently).
        """
        self._check_aligned(aligned, tokens)
        index = cache["index"]
        q = tokens.shape[1]
        k_pos = jax.lax.dynamic_update_slice_in_dim(cache["pos"], positions.astype(jnp.int32), index, axis=1)
        q_slot = index + jnp.arange(q, dtype=jnp.int32)
        k_slot = jnp.arange(k_pos.shape[1], dtype=jnp.int32)
        mask = attention_mask(q_slot, k_slot, positions, k_pos, prefix_len=prefix_len)
        logits, (new_k, new_v) = self._body(tokens, mask, positions, k_pos, deterministic=True, cache=cache,
                                            aligned=aligned)
        new_cache = {"k": new_k, "v": new_v, "pos": k_pos,
                     "index": index + q}
        return logits, new_cache


# ----------------------------------------------------------------------------------------------------------------
# Helpers for trainers and benchmarks.


def loss_and_metrics(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None, *,
                     z_loss: float = 0.0) -> tuple[jax.Array, dict]:
    """Weighted next-token cross-entropy: mean over weighted tokens, plus accuracy and token count.

    `logits` [b, l, v] must already be aligned with `targets` [b, l] (logits[:, t] predicts targets[:, t]).
    `z_loss` adds z_loss * logsumexp^2 (PaLM-style stabiliser) when > 0.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree: need [b, l, v] and [b, l]")
    logits = logits.astype(jnp.float32)
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if z_loss > 0:
        ce = ce + z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))
    num = jnp.sum(weights)
    denom = jnp.maximum(num, 1.0)
    loss = jnp.sum(ce * weights) / denom
    accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / denom
    return loss, {"loss": loss, "accuracy": accuracy, "num_tokens": num}


def num_params(cfg: TransformerConfig, *, embeddings: bool = True) -> int:
    """Parameter count from shapes only (via nnx.eval_shape: nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    total = 0
    for path, leaf in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        if not embeddings and path[0] in ("embed", "aligned_embed", "logits_kernel"):
            continue
        total += math.prod(leaf.shape)
    return total


def flops_per_token(cfg: TransformerConfig, seq_len: int, *, training: bool = True) -> float:
    """Model FLOPs per token (PaLM appendix B): forward = 2 N + 2 * 2 * layers * heads * head_dim * seq_len.

    N counts the matmul weights (attention, MLP and the output projection; the embedding lookup is free).
    The attention term counts q.k^T and probs.v over the full sequence (as executed, the causal half included).
    Training = 3 x forward (backward is twice the forward).
    """
    attn_w = 4 * cfg.d_model * cfg.num_heads * cfg.head_dim
    mlp_w = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_ff
    n = cfg.num_layers * (attn_w + mlp_w) + cfg.d_model * cfg.vocab_size
    forward = 2 * n + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return float(3 * forward if training else forward)


# Weights that are only ever read after a cast to the activation dtype (norm scales and the bias table are read in
# float32, so they stay).
MATMUL_WEIGHTS = ("embed", "aligned_embed", "wq", "wk", "wv", "wo", "wi", "wi_gate", "logits_kernel")


def cast_matmul_weights(model: Transformer) -> Transformer:
    """Casts the matmul weights to the activation dtype in place: same outputs, but a decoding loop no longer
    re-casts every float32 weight at every step. For inference copies only (the float32 masters are gone)."""
    dt = jnp.dtype(model.cfg.dtype)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param) and path and path[-1] in MATMUL_WEIGHTS and node[...].dtype != dt:
            node.set_value(node[...].astype(dt))
    return model


def logical_param_specs(model: nnx.Module, mesh: jax.sharding.Mesh | None = None, rules=None):
    """State of PartitionSpecs over mesh axes for `model`'s parameters (logical names mapped through the rules)."""
    specs = nnx.get_partition_spec(nnx.state(model))
    return jax.tree.map(lambda s: logical_to_spec(tuple(s), rules, mesh), specs,
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
