"""Semi-hard triplet loss (FaceNet, Schroff et al. 2015) on unit embeddings, and batch retrieval metrics.

For anchor i with positive p_i, the negatives are the other rows' positives and every row's explicit negative (a
transposed copy or another tune), except those of the same melody as i (`lines`: the melody id of each row;
`negative_lines`: of each explicit negative, -1 for a transposed copy, which is never the same melody). The semi-hard negative is the nearest one farther than the positive; when
none is, the farthest negative closer than the positive (the mildest violation) is used.
Loss: mean over anchors of max(0, d(a, p) - d(a, n) + margin), d the squared L2 distance (= 2 - 2 cos).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sq_dist(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N, D] x [M, D] unit vectors -> [N, M] squared distances."""
    return jnp.maximum(2.0 - 2.0 * a @ b.T, 0.0)


def semi_hard_triplet_loss(anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float = 0.5,
                           lines: jax.Array | None = None,
                           negative_lines: jax.Array | None = None) -> tuple[jax.Array, dict]:
    b = anchor.shape[0]
    lines = jnp.arange(b) if lines is None else lines
    negative_lines = jnp.full((b,), -1) if negative_lines is None else negative_lines
    d_ap = jnp.sum((anchor - positive) ** 2, -1)                              # [B]
    cands = jnp.concatenate([positive, negative], 0)                           # [2B, D]
    d_an = sq_dist(anchor, cands)                                              # [B, 2B]
    valid = jnp.concatenate([lines, negative_lines])[None, :] != lines[:, None]   # [B, 2B]
    farther = valid & (d_an > d_ap[:, None])
    semi = jnp.min(jnp.where(farther, d_an, jnp.inf), -1)
    fallback = jnp.max(jnp.where(valid & ~farther, d_an, -jnp.inf), -1)
    chosen = jnp.where(jnp.isfinite(semi), semi, fallback)
    loss = jnp.mean(jnp.where(jnp.isfinite(chosen), jax.nn.relu(d_ap - chosen + margin), 0.0))
    d_own = jnp.sum((anchor - negative) ** 2, -1)
    sims = anchor @ positive.T
    metrics = {"triplet_accuracy": jnp.mean(d_ap < d_own),
               "batch_r1": jnp.mean(lines[jnp.argmax(sims, -1)] == lines),   # nearest positive is of the same melody
               "pos_cosine": jnp.mean(1.0 - d_ap / 2.0), "neg_cosine": jnp.mean(1.0 - d_own / 2.0)}
    return loss, metrics
