"""Residual vector quantizer with EMA codebooks (SoundStream / EnCodec style).

Codebooks are not parameters: they live in `CodebookState` variables (a BatchStat kind, so `nnx.Param` filters and
optimizers skip them) and change only through `kmeans_init` (first batch; Lloyd's k-means of quantization/kmeans.py) and `ema_update` (every train step, from the
statistics the forward pass returns). Gradients reach the encoder through the straight-through estimator; the
commitment loss pulls encoder outputs towards their codes.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.quantization.kmeans import lloyd, nearest
from musiclm_jax.train.partitioning import with_logical_constraint


class CodebookState(nnx.BatchStat):
    """Codebook vectors and their EMA statistics: updated in the train step, never by the optimizer."""


class VQStats(NamedTuple):
    """What one training forward pass tells the EMA update (per level)."""
    counts: jax.Array  # [Q, K] vectors assigned to each code (dropped levels count nothing)
    sums: jax.Array  # [Q, K, D] sum of the residuals assigned to each code
    residuals: jax.Array  # [Q, N, D] the residual each level saw (candidates to revive dead codes)
    active: jax.Array  # [Q, N] whether that residual belongs to a level the example kept


class VQOutput(NamedTuple):
    quantized: jax.Array  # [B, T, D], straight-through: forward = codes, gradient = identity to the input
    codes: jax.Array  # [B, T, Q] int32
    commit_loss: jax.Array  # scalar
    stats: VQStats


class ResidualVQ(nnx.Module):
    """Q levels of K codes of dimension D; level l quantizes what levels < l left over."""

    def __init__(self, num_levels: int, codebook_size: int, dim: int, *, decay: float = 0.99, eps: float = 1e-5,
                 dead_threshold: float = 0.03, kmeans_iters: int = 10, rngs: nnx.Rngs):
        self.num_levels, self.codebook_size, self.dim = num_levels, codebook_size, dim
        self.decay, self.eps, self.dead_threshold, self.kmeans_iters = decay, eps, dead_threshold, kmeans_iters
        init = jax.random.normal(rngs.params(), (num_levels, codebook_size, dim)) * dim ** -0.5
        self.codebook = CodebookState(init, out_sharding=("layers", "codebook", None))
        self.embed_sum = CodebookState(init, out_sharding=("layers", "codebook", None))
        self.cluster_size = CodebookState(jnp.ones((num_levels, codebook_size)), out_sharding=("layers", "codebook"))
        self.initialized = CodebookState(jnp.zeros((), jnp.bool_))

    def level_mask(self, batch: int, num_levels: int | None = None) -> jax.Array:
        """``[batch, Q]`` mask keeping the first `num_levels` levels (all when None) for every example."""
        n = self.num_levels if num_levels is None else self.check_levels(num_levels)
        return jnp.broadcast_to(jnp.arange(self.num_levels) < n, (batch, self.num_levels))

    def dropout_mask(self, batch: int, key: jax.Array, prob: float = 1.0) -> jax.Array:
        """Quantizer dropout: with probability `prob` an example keeps a uniform 1..Q levels, otherwise all Q."""
        k_levels, k_apply = jax.random.split(key)
        n = jax.random.randint(k_levels, (batch,), 1, self.num_levels + 1)
        n = jnp.where(jax.random.uniform(k_apply, (batch,)) < prob, n, self.num_levels)
        return jnp.arange(self.num_levels)[None, :] < n[:, None]

    def check_levels(self, num_levels: int) -> int:
        if not 1 <= int(num_levels) <= self.num_levels:
            raise ValueError(f"num_levels={num_levels} is out of range: pick 1..{self.num_levels}")
        return int(num_levels)

    def __call__(self, z: jax.Array, mask: jax.Array | None = None) -> VQOutput:
        """Quantizes ``z [B, T, D]``; `mask` ``[B, Q]`` says which levels each example uses (default: all)."""
        b, t, d = z.shape
        mask = self.level_mask(b) if mask is None else mask
        codebook = jax.lax.stop_gradient(self.codebook[...])
        flat = z.reshape(b * t, d)
        active = jnp.repeat(mask, t, axis=0).T.astype(z.dtype)  # [Q, N]
        residual, quantized = flat, jnp.zeros_like(flat)
        codes, counts, sums, residuals, commit = [], [], [], [], 0.0
        for level in range(self.num_levels):
            idx = nearest(jax.lax.stop_gradient(residual), codebook[level])
            q = codebook[level][idx]
            w = active[level][:, None]
            onehot = jax.nn.one_hot(idx, self.codebook_size, dtype=z.dtype) * w
            counts.append(onehot.sum(0))
            sums.append(onehot.T @ jax.lax.stop_gradient(residual))
            residuals.append(jax.lax.stop_gradient(residual))
            commit = commit + jnp.sum(w * (residual - q) ** 2) / jnp.maximum(jnp.sum(w) * d, 1.0)
            quantized = quantized + w * q
            residual = residual - w * q
            codes.append(idx)
        commit = commit / self.num_levels
        quantized = quantized.reshape(b, t, d)
        out = z + jax.lax.stop_gradient(quantized - z)
        codes = jnp.stack(codes, -1).reshape(b, t, self.num_levels)
        stats = VQStats(jnp.stack(counts), jnp.stack(sums), jnp.stack(residuals), active > 0)
        return VQOutput(with_logical_constraint(out, ("batch", "length", None)), codes, commit, stats)

    def encode(self, z: jax.Array, num_levels: int | None = None) -> jax.Array:
        """``[B, T, D]`` -> codes ``[B, T, num_levels]`` (int32)."""
        n = self.num_levels if num_levels is None else self.check_levels(num_levels)
        return self(z)[1][..., :n]

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes ``[B, T, n]`` (any n <= Q) -> ``[B, T, D]``: the sum of the first n levels' code vectors."""
        n = self.check_levels(codes.shape[-1])
        codebook = self.codebook[...]
        return sum(codebook[level][codes[..., level]] for level in range(n))

    def kmeans_init(self, z: jax.Array, key: jax.Array) -> None:
        """Sets every level's codebook by k-means on the residuals of `z` ``[B, T, D]`` (level by level)."""
        residual = jax.lax.stop_gradient(z.reshape(-1, z.shape[-1]))
        centers_all, counts_all = [], []
        for level, lkey in enumerate(jax.random.split(key, self.num_levels)):
            centers, counts = lloyd(residual, self.codebook_size, self.kmeans_iters, lkey)
            residual = residual - centers[nearest(residual, centers)]
            centers_all.append(centers)
            counts_all.append(counts)
        centers, counts = jnp.stack(centers_all), jnp.stack(counts_all)
        self.codebook[...] = centers
        self.cluster_size[...] = counts
        self.embed_sum[...] = centers * counts[..., None]
        self.initialized[...] = jnp.ones((), jnp.bool_)

    def maybe_kmeans_init(self, z: jax.Array, key: jax.Array) -> None:
        """`kmeans_init` on the first call only (a `lax.cond`, so it compiles into the train step)."""
        graphdef, state = nnx.split(self)

        def init(state):
            module = nnx.merge(graphdef, state)
            module.kmeans_init(z, key)
            return nnx.state(module)

        nnx.update(self, jax.lax.cond(self.initialized[...], lambda s: s, init, state))

    def ema_update(self, stats: VQStats, key: jax.Array) -> jax.Array:
        """EMA codebook update from `stats`, then dead-code replacement. Returns the number of codes revived."""
        decay = self.decay
        cluster_size = decay * self.cluster_size[...] + (1 - decay) * stats.counts
        embed_sum = decay * self.embed_sum[...] + (1 - decay) * stats.sums
        total = cluster_size.sum(-1, keepdims=True)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        smoothed = (cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        codebook = embed_sum / smoothed[..., None]

        # Dead codes jump to random residuals of this batch from active examples. "Dead": EMA usage below
        # `dead_threshold` times the usage every code would have if all were used equally (batch-size free).
        uniform = stats.active.sum(-1, keepdims=True) / self.codebook_size  # [Q, 1]
        threshold = self.dead_threshold * uniform
        dead = cluster_size < threshold  # [Q, K]
        keys = jax.random.split(key, self.num_levels)
        logits = jnp.where(stats.active, 0.0, -jnp.inf)  # [Q, N]
        pick = jax.vmap(lambda k, lg: jax.random.categorical(k, lg, shape=(self.codebook_size,)))(keys, logits)
        fresh = jnp.take_along_axis(stats.residuals, pick[..., None], axis=1)  # [Q, K, D]
        any_active = stats.active.any(-1)[:, None]  # a level no example used has nothing to revive from
        dead = dead & any_active
        self.codebook[...] = jnp.where(dead[..., None], fresh, codebook)
        # A revived code starts with the uniform usage, so it has time to attract vectors before it can die again.
        self.cluster_size[...] = jnp.where(dead, uniform, cluster_size)
        self.embed_sum[...] = jnp.where(dead[..., None], fresh * uniform[..., None], embed_sum)
        return dead.sum()


def usage_and_perplexity(codes: jax.Array, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """Per-level fraction of codes used and perplexity (exp entropy) of ``codes [..., Q]``. Both ``[Q]``."""
    flat = codes.reshape(-1, codes.shape[-1])
    hist = jax.vmap(lambda c: jnp.bincount(c, length=codebook_size), in_axes=1)(flat).astype(jnp.float32)
    probs = hist / jnp.maximum(hist.sum(-1, keepdims=True), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), -1)
    return (hist > 0).mean(-1), jnp.exp(entropy)
