"""Short content hashes that name a checkpoint or an array exactly (recorded with tokens, k-means and caches)."""
from __future__ import annotations

import hashlib

import jax
import numpy as np


def params_fingerprint(params) -> str:
    """A short content hash of a parameter tree (leaf paths, shapes and bytes): names a checkpoint exactly."""
    h = hashlib.sha256()
    for path, leaf in jax.tree.leaves_with_path(params):
        a = np.asarray(jax.device_get(leaf))
        h.update(jax.tree_util.keystr(path).encode() + str(a.shape).encode() + str(a.dtype).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def module_fingerprint(module) -> str:
    """`params_fingerprint` of an NNX module's parameters (batch statistics and codebooks left out)."""
    from flax import nnx

    return params_fingerprint(nnx.state(module, nnx.Param))


def array_digest(a, *, chars: int = 16, include_shape: bool = True) -> str:
    """sha256 of an array's float32 bytes (and shape), first `chars` hex digits. The token caches use the 8-digit,
    shape-free form: kept as it was so caches written before stay valid."""
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    payload = a.tobytes() + (str(a.shape).encode() if include_shape else b"")
    return hashlib.sha256(payload).hexdigest()[:chars]
