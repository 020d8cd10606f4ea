"""Contrastive losses between L2-normalised audio and text embeddings of one (global) batch.

Both take ``audio [B, D]`` and ``text [B, D]`` where row i of each is a pair. Under `jax.jit` with the batch sharded
across devices, ``audio @ text.T`` is the full global ``[B, B]`` matrix (XLA gathers the other shards' rows), so
every example is contrasted with the whole global batch, not only its device's share.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from musiclm_jax.train.partitioning import with_logical_constraint


def similarity(audio: jax.Array, text: jax.Array) -> jax.Array:
    """Cosine-similarity matrix ``[B_audio, B_text]`` (inputs are unit vectors), in float32."""
    sims = jnp.einsum("ad,td->at", audio.astype(jnp.float32), text.astype(jnp.float32))
    return with_logical_constraint(sims, ("batch", None))


def softmax_loss(audio: jax.Array, text: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE (CLIP / MuLan): mean of audio->text and text->audio cross-entropy. Scalar."""
    logits = similarity(audio, text) * jnp.exp(logit_scale)
    labels = jnp.arange(logits.shape[0])
    a2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    t2a = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    return 0.5 * (a2t.mean() + t2a.mean())


def sigmoid_loss(audio: jax.Array, text: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array) -> jax.Array:
    """Pairwise sigmoid loss (SigLIP): each pair is its own binary problem, so it needs no large batch. Scalar.

    Normalised per example (sum over the row, mean over rows), as in the SigLIP paper.
    """
    logits = similarity(audio, text) * jnp.exp(logit_scale) + logit_bias
    labels = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    return -jnp.mean(jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=-1))


def retrieval_ranks(sims: jax.Array) -> jax.Array:
    """Rank (0 = best) of the true match on each row of a square similarity matrix ``[N, N]``."""
    true = jnp.diagonal(sims)[:, None]
    return jnp.sum(sims > true, axis=-1)
