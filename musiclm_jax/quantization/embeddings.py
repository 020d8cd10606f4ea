"""Tokens of embedding vectors: a `ResidualVQ` (rvq.py, also the codec's bottleneck) fitted once, after a model is
trained, by level-wise k-means on its embeddings [N, D], then applied unchanged (MuLan: fitted on audio embeddings,
applied to audio and text, which share the space; paper 12 x 1024. Melody: 24 x 512). Saved with orbax next to the
model."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.quantization.rvq import ResidualVQ, usage_and_perplexity


def new_rvq(levels: int, codebook_size: int, dim: int, kmeans_iters: int = 20, seed: int = 0) -> ResidualVQ:
    with nnx.use_eager_sharding(False):
        return ResidualVQ(levels, codebook_size, dim, kmeans_iters=kmeans_iters, rngs=nnx.Rngs(seed))


def fit_rvq(embeddings: np.ndarray, levels: int, codebook_size: int, kmeans_iters: int = 20,
            seed: int = 0) -> ResidualVQ:
    """Level-wise k-means on `embeddings [N, D]`. Warns (via the return value's stats) when N < codebook_size."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"fit_rvq needs embeddings [N, D] with N > 0, got shape {emb.shape}")
    rvq = new_rvq(levels, codebook_size, emb.shape[1], kmeans_iters, seed)
    fit = nnx.jit(lambda m, x, k: m.kmeans_init(x, k))
    fit(rvq, jnp.asarray(emb)[:, None, :], jax.random.key(seed))
    return rvq


@nnx.jit
def _encode(rvq: ResidualVQ, emb: jax.Array) -> jax.Array:
    return rvq(emb[:, None, :]).codes[:, 0, :]


@nnx.jit
def _decode(rvq: ResidualVQ, codes: jax.Array) -> jax.Array:
    return rvq.decode(codes[:, None, :])[:, 0, :]


def encode(rvq: ResidualVQ, embeddings: np.ndarray) -> np.ndarray:
    """[N, D] -> int32 codes [N, levels]."""
    return np.asarray(_encode(rvq, jnp.asarray(embeddings, jnp.float32)))


def decode(rvq: ResidualVQ, codes: np.ndarray) -> np.ndarray:
    """int32 codes [N, levels] -> reconstructed embeddings [N, D] (sum of the code vectors)."""
    return np.asarray(_decode(rvq, jnp.asarray(codes, jnp.int32)))


def quantization_report(rvq: ResidualVQ, embeddings: np.ndarray) -> dict:
    """How much the tokens lose: mean cosine(embedding, reconstruction), per number of levels used, and usage."""
    emb = np.asarray(embeddings, np.float32)
    codes = encode(rvq, emb)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-9)
    cos_by_levels = []
    for n in range(1, rvq.num_levels + 1):
        rec = decode(rvq, codes[:, :n])
        rec = rec / np.maximum(np.linalg.norm(rec, axis=-1, keepdims=True), 1e-9)
        cos_by_levels.append(float(np.mean(np.sum(unit * rec, -1))))
    usage, perplexity = usage_and_perplexity(jnp.asarray(codes), rvq.codebook_size)
    return {"num": int(emb.shape[0]), "cosine": cos_by_levels[-1], "cosine_lost": 1.0 - cos_by_levels[-1],
            "cosine_by_levels": cos_by_levels, "usage": np.asarray(usage).tolist(),
            "perplexity": np.asarray(perplexity).tolist()}


def save_rvq(rvq: ResidualVQ, directory: str) -> str:
    import orbax.checkpoint as ocp

    path = os.path.abspath(directory)
    state = nnx.to_pure_dict(nnx.state(rvq))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, state, force=True)
    return path


def load_rvq(directory: str, levels: int, codebook_size: int, dim: int,
             hint: str = "fit one first (e.g. `musiclm-jax mulan train` does it at the end)") -> ResidualVQ:
    import orbax.checkpoint as ocp

    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise ValueError(f"no quantizer at {path}: {hint}")
    rvq = new_rvq(levels, codebook_size, dim)
    target = nnx.to_pure_dict(nnx.state(rvq))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target))
    state = nnx.state(rvq)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(rvq, state)
    return rvq
