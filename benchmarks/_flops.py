"""Matmul peak FLOP/s of this machine, measured with XLA (the denominator of every MFU figure we report).

    from benchmarks._flops import matmul_peak
    peak = matmul_peak("bfloat16")   # FLOP/s of a square jitted matmul on one device, best of a few runs

    bw = read_bandwidth()               # bytes/s of one read pass over 256 MiB

Run directly to print fp32 and bf16 peaks and the read bandwidth: `.venv/bin/python benchmarks/_flops.py`.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def time_fn(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time (s) of `fn(*args)` over `repeats` runs after `warmup` runs (results blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5, device=None) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` (2 n^3 FLOPs) on `device` (default: the first device)."""
    device = device or jax.devices()[0]
    keys = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(keys[0], (n, n), jnp.float32).astype(dtype), device)
    b = jax.device_put(jax.random.normal(keys[1], (n, n), jnp.float32).astype(dtype), device)
    fn = jax.jit(lambda x, y: x @ y)
    return 2 * n ** 3 / time_fn(fn, a, b, repeats=repeats)


def read_bandwidth(num_bytes: int = 1 << 28, repeats: int = 5, device=None) -> float:
    """Memory read bandwidth (bytes/s): a jitted sum over a float32 array of `num_bytes`, which reads every byte once
    and writes nothing (a copy would also time allocating and first-touching its output). Cached decoding is this
    kind of traffic: every weight and the K/V buffer read once per step."""
    device = device or jax.devices()[0]
    x = jax.device_put(jnp.ones((max(num_bytes // 4, 1024),), jnp.float32), device)
    fn = jax.jit(jnp.sum)
    return x.size * 4 / time_fn(fn, x, repeats=repeats)


if __name__ == "__main__":
    for dt in ("float32", "bfloat16"):
        print(f"{dt}: {matmul_peak(dt) / 1e9:.1f} GFLOP/s")
    print(f"read bandwidth: {read_bandwidth() / 1e9:.1f} GB/s")
