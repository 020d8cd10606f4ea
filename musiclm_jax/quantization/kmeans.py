"""k-means in JAX, the one implementation of the project: the shared distance and assignment, Lloyd's iterations
inside jit (`lloyd`: the residual VQ initialises its codebooks with it), and mini-batch k-means (`fit`: k-means++ init,
deterministic by seed, batches sharded over a device mesh) on host data.

The semantic tokens are the nearest-centroid ids of w2v-BERT features (paper: 1024 clusters of layer-7 features).
Fitting follows Sculley (2010) with per-cluster learning rates 1/count, i.e. each centre is the running mean of
every point ever assigned to it: ``c <- (n_c * c + sum_batch) / (n_c + m_batch)``. Centres that have never won a
point are re-seeded from the batch point farthest from its centre (deterministic, no dead clusters at the end).

Sharding: the batch is split along the logical ``batch`` axis over the mesh, centres are replicated; the per-step
statistics (per-cluster sums and counts) are reductions XLA inserts the all-reduce for, so the sharded result is the
unsharded one up to float summation order (assignments agree exactly in practice; tests check it).

A fitted model is saved as ``centers.npy`` (no pickle) + ``kmeans.json`` (sizes, fit settings, inertia, and the
fingerprint of the w2v-BERT checkpoint whose features it clustered, so tokens always name their source).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from musiclm_jax.quantization.fingerprint import array_digest

CENTERS_FILE = "centers.npy"
META_FILE = "kmeans.json"


@dataclasses.dataclass(frozen=True)
class KMeansConfig:
    num_clusters: int = 1024
    batch_size: int = 4096
    num_steps: int = 200
    init_samples: int = 16384   # k-means++ runs on this many points drawn from the data
    seed: int = 0

    def __post_init__(self):
        for name in ("num_clusters", "batch_size", "num_steps", "init_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"KMeansConfig.{name} must be >= 1, got {getattr(self, name)}")


def _raw_sq_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    centers = centers.astype(jnp.float32)
    return jnp.sum(x * x, -1, keepdims=True) - 2.0 * x @ centers.T + jnp.sum(centers * centers, -1)[None]


def sq_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
    """Squared Euclidean distances [N, K] via ||x||^2 - 2 x.c + ||c||^2 (clamped at 0)."""
    return jnp.maximum(_raw_sq_distances(x, centers), 0.0)


def assign(x: jax.Array, centers: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centre id [N] (int32) and its squared distance [N]."""
    d = sq_distances(x, centers)
    ids = jnp.argmin(d, -1).astype(jnp.int32)
    return ids, jnp.take_along_axis(d, ids[:, None], -1)[:, 0]


def nearest(x: jax.Array, centers: jax.Array) -> jax.Array:
    """Nearest centre id [N] (int32) of each row of `x` [N, D]; unclamped, so rounding never makes a tie."""
    return jnp.argmin(_raw_sq_distances(x, centers), -1).astype(jnp.int32)


def lloyd(x: jax.Array, k: int, iters: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means on ``x [N, D]`` from `k` random points, jittable: (centers [k, D], counts [k]). Empty
    clusters keep their centre."""
    n = x.shape[0]
    centers = x[jax.random.choice(key, n, (k,), replace=n < k)]

    def step(_, centers):
        onehot = jax.nn.one_hot(nearest(x, centers), k, dtype=x.dtype)
        counts = onehot.sum(0)
        sums = onehot.T @ x
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centers)

    centers = jax.lax.fori_loop(0, iters, step, centers)
    counts = jax.nn.one_hot(nearest(x, centers), k, dtype=x.dtype).sum(0)
    return centers, counts


@jax.jit
def _kmeans_pp(x: jax.Array, key: jax.Array, centers0: jax.Array) -> jax.Array:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ D(x)^2."""
    k = centers0.shape[0]
    first = jax.random.randint(jax.random.fold_in(key, 0), (), 0, x.shape[0])
    centers = centers0.at[0].set(x[first])
    min_d = sq_distances(x, centers[:1])[:, 0]

    def body(i, carry):
        centers, min_d = carry
        total = jnp.sum(min_d)
        # All points coincide with chosen centres: fall back to uniform (duplicates are harmless, re-seeded later).
        logits = jnp.where(total > 0, jnp.log(jnp.maximum(min_d, 1e-30)), 0.0)
        logits = jnp.where((total > 0) & (min_d <= 0), -jnp.inf, logits)
        idx = jax.random.categorical(jax.random.fold_in(key, i), logits)
        centers = centers.at[i].set(x[idx])
        min_d = jnp.minimum(min_d, sq_distances(x, x[idx][None])[:, 0])
        return centers, min_d

    centers, _ = jax.lax.fori_loop(1, k, body, (centers, min_d))
    return centers


def kmeans_plus_plus(x: np.ndarray | jax.Array, k: int, key: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.shape[0] < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {x.shape[0]}: give more features or fewer "
                         "clusters")
    return _kmeans_pp(x, key, jnp.zeros((k, x.shape[1]), jnp.float32))


def batch_statistics(x: jax.Array, centers: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(per-cluster sums [K, D], counts [K], inertia (sum of squared distances), distances [N])."""
    ids, dist = assign(x, centers)
    onehot = jax.nn.one_hot(ids, centers.shape[0], dtype=jnp.float32)
    sums = onehot.T @ x.astype(jnp.float32)
    return sums, jnp.sum(onehot, 0), jnp.sum(dist), dist


def minibatch_update(centers: jax.Array, counts: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One mini-batch step -> (centers, cumulative counts, batch inertia). Never-used centres re-seed from the
    batch's farthest points (largest distance first), so all clusters end up in use."""
    sums, batch_counts, inertia, dist = batch_statistics(x, centers)
    new_counts = counts + batch_counts
    updated = (counts[:, None] * centers + sums) / jnp.maximum(new_counts, 1.0)[:, None]
    dead = new_counts == 0
    # The r-th dead centre (in index order) takes the r-th farthest batch point.
    far = jnp.argsort(-dist)
    rank = jnp.clip(jnp.cumsum(dead) - 1, 0, x.shape[0] - 1)
    reseeded = x[far[rank]].astype(jnp.float32)
    centers = jnp.where(dead[:, None], reseeded, updated)
    return centers, new_counts + dead.astype(new_counts.dtype), inertia


@dataclasses.dataclass
class KMeans:
    """A fitted k-means model: `centers` [K, D] float32 and where it came from."""

    centers: np.ndarray
    fingerprint: str = ""         # of the feature extractor's checkpoint (see `quantization.fingerprint`)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        return int(self.centers.shape[0])

    def predict(self, x: np.ndarray | jax.Array) -> np.ndarray:
        """Cluster ids of features [..., D] -> int32 [...]."""
        x = jnp.asarray(x, jnp.float32)
        if x.shape[-1] != self.centers.shape[1]:
            raise ValueError(f"features have dim {x.shape[-1]} but the k-means centres have {self.centers.shape[1]}: "
                             "use the k-means fitted on this model's features")
        ids = _predict(x.reshape(-1, x.shape[-1]), jnp.asarray(self.centers))
        return np.asarray(ids).reshape(x.shape[:-1])

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        np.save(os.path.join(directory, CENTERS_FILE), np.asarray(self.centers, np.float32), allow_pickle=False)
        meta = dict(self.meta, num_clusters=self.num_clusters, dim=int(self.centers.shape[1]),
                    fingerprint=self.fingerprint, centers_sha256=array_digest(self.centers))
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        return directory

    @classmethod
    def load(cls, directory: str, expected_fingerprint: str | None = None) -> "KMeans":
        path = os.path.join(directory, META_FILE)
        if not os.path.exists(path):
            raise ValueError(f"{directory} has no {META_FILE}: fit k-means first (`musiclm-jax semantic fit-kmeans`)")
        with open(path) as f:
            meta = json.load(f)
        centers = np.load(os.path.join(directory, CENTERS_FILE), allow_pickle=False)
        if array_digest(centers) != meta.get("centers_sha256"):
            raise ValueError(f"{directory}/{CENTERS_FILE} does not match its {META_FILE} (corrupt or edited): refit")
        fingerprint = meta.pop("fingerprint", "")
        if expected_fingerprint and fingerprint and fingerprint != expected_fingerprint:
            raise ValueError(f"k-means in {directory} was fitted on features of checkpoint {fingerprint}, not of "
                             f"{expected_fingerprint}: refit it on this checkpoint's features")
        return cls(centers=centers, fingerprint=fingerprint, meta=meta)


@jax.jit
def _predict(x, centers):
    return assign(x, centers)[0]


def _batch_sharding(mesh: jax.sharding.Mesh | None):
    if mesh is None:
        return None, None
    from musiclm_jax.train import partitioning

    _, rules = partitioning.current()
    rows = NamedSharding(mesh, partitioning.logical_to_spec(("batch", None), rules, mesh))
    return rows, NamedSharding(mesh, jax.sharding.PartitionSpec())


def fit(features: np.ndarray, cfg: KMeansConfig, *, mesh: jax.sharding.Mesh | None = None,
        fingerprint: str = "", init_centers: np.ndarray | None = None) -> KMeans:
    """Fits mini-batch k-means on `features` [N, D] (host numpy). Deterministic given (features, cfg).

    With `mesh`, every batch is sharded along the logical `batch` axis (its size must divide by the batch shards).
    """
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"k-means features must be a non-empty [N, D] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("k-means features contain NaN or Inf: check the feature extractor or its input audio")
    k = cfg.num_clusters
    if x.shape[0] < k:
        raise ValueError(f"{x.shape[0]} feature vectors are fewer than num_clusters={k}: use more audio or fewer "
                         "clusters")
    key = jax.random.key(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if init_centers is None:
        init_idx = rng.choice(x.shape[0], size=min(cfg.init_samples, x.shape[0]), replace=False)
        centers = kmeans_plus_plus(x[np.sort(init_idx)], k, jax.random.fold_in(key, 1))
    else:
        centers = jnp.asarray(init_centers, jnp.float32)
    batch = min(cfg.batch_size, x.shape[0])
    rows_sh, repl_sh = _batch_sharding(mesh)
    if rows_sh is not None:
        from musiclm_jax.train import partitioning
        _, rules = partitioning.current()
        shards = partitioning.batch_divisor(mesh, rules)
        if batch % shards:
            raise ValueError(f"k-means batch_size {batch} is not a multiple of the {shards} batch shards of the "
                             "mesh: change batch_size")
        step = jax.jit(minibatch_update, in_shardings=(repl_sh, repl_sh, rows_sh),
                       out_shardings=(repl_sh, repl_sh, repl_sh))
        centers = jax.device_put(centers, repl_sh)
    else:
        step = jax.jit(minibatch_update)
    counts = jnp.zeros((k,), jnp.float32)
    inertias = []
    for _ in range(cfg.num_steps):
        idx = rng.choice(x.shape[0], size=batch, replace=False)
        xb = jax.device_put(x[idx], rows_sh) if rows_sh is not None else jnp.asarray(x[idx])
        centers, counts, inertia = step(centers, counts, xb)
        inertias.append(inertia)
    inertias = [float(v) / batch for v in jax.device_get(inertias)]
    meta = {"config": dataclasses.asdict(cfg), "num_points": int(x.shape[0]),
            "first_batch_inertia": inertias[0], "last_batch_inertia": inertias[-1]}
    return KMeans(centers=np.asarray(jax.device_get(centers)), fingerprint=fingerprint, meta=meta)


def cluster_usage(ids: np.ndarray, num_clusters: int) -> dict:
    """Fraction of clusters used, and the entropy of the id histogram (nats and as a fraction of log K)."""
    counts = np.bincount(np.asarray(ids).reshape(-1), minlength=num_clusters).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return {"used_fraction": float((counts > 0).mean()), "entropy_nats": entropy,
            "normalized_entropy": float(entropy / np.log(num_clusters)) if num_clusters > 1 else 0.0,
            "perplexity": float(np.exp(entropy))}
