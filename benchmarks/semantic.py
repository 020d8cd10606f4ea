"""Semantic-token speed: w2v-BERT feature extraction (+ k-means assignment) and one training step, side by side with
a plain matmul measured in the same run (MFU = achieved model FLOP/s / matmul FLOP/s).

    .venv/bin/python benchmarks/semantic.py                       # tiny, CPU
    .venv/bin/python benchmarks/semantic.py --preset paper --batch 8 --seconds 30 --dtype bfloat16   # accelerator

Random weights (speed does not depend on training). Writes benchmarks/results/semantic.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def timed(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(dtype, n: int = 2048) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    return 2 * n ** 3 / timed(f, a)


def main() -> None:
    from musiclm_jax.semantic import w2v_bert as wb
    from musiclm_jax.semantic.family import W2vBertFamily
    from musiclm_jax.quantization.kmeans import assign
    from musiclm_jax.train import partitioning
    from musiclm_jax.train.trainer import Trainer

    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default="benchmarks/results/semantic.json")
    args = p.parse_args()

    cfg = wb.preset(args.preset, dtype=args.dtype)
    n = int(args.seconds * cfg.sample_rate)
    frames = cfg.num_frames(n)
    wave = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, n)).astype(np.float32) * 0.1)
    family = W2vBertFamily(config=cfg)
    trainer = Trainer(family, partitioning.make_mesh(devices=jax.devices()[:1]), rng_impl="rbg")
    state = trainer.init_state()
    model = trainer.merge(state["params"], state["rest"])["w2v_bert"]
    centers = jnp.asarray(np.random.default_rng(1).normal(size=(args.clusters, cfg.embed_dim)), jnp.float32)

    feat_fn = nnx.jit(lambda m, w: assign(m.features(w).reshape(-1, cfg.embed_dim), centers)[0])
    t_tok = timed(feat_fn, model, wave)
    batch = trainer.device_batch({"audio": np.asarray(wave)})

    def step(state):
        return trainer.train_step(state, batch)

    state, metrics = step(state)  # compile; the step donates its input state, so keep the returned one
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(3):
        state, metrics = step(state)
    jax.block_until_ready(metrics)
    t_step = (time.perf_counter() - t0) / 3
    peak = matmul_flops(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    step_flops = family.flops({"audio": np.asarray(wave)})
    results = {
        "device": jax.devices()[0].device_kind, "preset": args.preset, "dtype": args.dtype,
        "params": trainer.num_params(), "batch": args.batch, "seconds_per_clip": args.seconds, "frames": frames,
        "tokenize_seconds": t_tok, "tokens_per_sec": args.batch * frames / t_tok,
        "tokenize_real_time_factor": args.batch * args.seconds / t_tok,
        "train_step_seconds": t_step, "train_audio_seconds_per_sec": args.batch * args.seconds / t_step,
        "matmul_flops_per_sec": peak, "train_model_flops_per_sec": step_flops / t_step,
        "train_mfu_vs_matmul": step_flops / t_step / peak,
    }
    for k, v in results.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
