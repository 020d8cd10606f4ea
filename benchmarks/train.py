"""Training throughput of the token LM (tiny and base gin configs) on this machine: tokens/s and MFU.

MFU = model FLOPs per second (PaLM counting, `transformer.flops_per_token`) / matmul peak, with the fp32 and bf16
matmul peaks measured in the same run right before and after each model (benchmarks/_flops.py), on one device. The step timed is the trainer's real
jitted step (Adafactor, clipping, NaN guard), after two warm-up steps that compile it.

    .venv/bin/python benchmarks/train.py [--models tiny,base] [--steps 5]

Prints a table and writes benchmarks/results/train.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gin  # noqa: E402
import jax  # noqa: E402

from benchmarks._flops import matmul_peak  # noqa: E402
from musiclm_jax.lm.models import TokenLM  # noqa: E402
from musiclm_jax.train import data, gin_utils, partitioning  # noqa: E402
from musiclm_jax.train.optimizers import make_optimizer, make_schedule  # noqa: E402
from musiclm_jax.train.trainer import Trainer  # noqa: E402

# name: (gin model file, global batch, target length, timed steps by default, activation dtype override)
SETTINGS = {"tiny": ("models/lm_tiny.gin", 32, 64, 30, None),
            "base": ("models/lm_base.gin", 2, 128, 2, None),  # bf16 activations, as configured
            "base_fp32": ("models/lm_base.gin", 2, 128, 2, "float32")}


def family_from_gin(path: str, dtype: str | None = None, bindings=()) -> TokenLM:
    gin.clear_config()
    try:
        gin_utils.parse_config([path], [*bindings, *([f"TransformerConfig.dtype = '{dtype}'"] if dtype else [])])
        return TokenLM(config=gin.get_bindings("TokenLM")["config"])
    finally:
        gin.clear_config()


def bench(name: str, steps: int | None, device) -> dict:
    path, batch_size, length, default_steps, dtype = SETTINGS[name]
    row = time_train_steps(family_from_gin(path, dtype), batch_size, length, steps or default_steps, device)
    return {"model": name, "gin": f"gin/{path}", **row}


def time_train_steps(family: TokenLM, batch_size: int, length: int, steps: int, device) -> dict:
    """The trainer's real jitted step (Adafactor, clipping, NaN guard) on one device: two warm-up steps (compile),
    then `steps` timed ones on synthetic tokens of `length`."""
    mesh = partitioning.make_mesh(devices=[device])
    optimizer = lambda: make_optimizer("adafactor", schedule=make_schedule(1e-3, "constant", 0))  # noqa: E731
    trainer = Trainer(family, mesh, optimizer=optimizer, rng_impl="rbg")
    ds = data.synthetic_tokens(batch_size=batch_size, vocab_size=family.config.vocab_size, length=length)
    t0 = time.perf_counter()
    state = trainer.init_state()
    batches = [next(ds) for _ in range(steps + 2)]
    for b in batches[:2]:  # compile + one warm step
        state, metrics = trainer.train_step(state, b)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches[2:]:
        state, metrics = trainer.train_step(state, b)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
    flops = sum(family.flops(b) for b in batches[2:])
    tokens = sum(family.tokens(b) for b in batches[2:])
    return {"params": trainer.num_params(), "dtype": family.config.dtype,
            "batch": batch_size, "length": length, "timed_steps": steps, "step_s": elapsed / steps,
            "tokens_per_s": tokens / elapsed, "model_flops_per_s": flops / elapsed,
            "init_and_compile_s": compile_s, "final_loss": float(metrics["loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SETTINGS), help=f"comma-separated, from {sorted(SETTINGS)}")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default: per model)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train.json"))
    args = parser.parse_args()
    device = jax.devices()[0]
    measure = lambda: {dt: matmul_peak(dt, device=device) for dt in ("float32", "bfloat16")}  # noqa: E731
    rows = []
    for name in args.models.split(","):
        if name not in SETTINGS:
            raise SystemExit(f"error: unknown model {name!r}: use names from {sorted(SETTINGS)}")
        # The machine is shared: the peak is measured right before and right after each model, and MFU uses
        # their mean, so a load change during the run moves numerator and denominator together.
        before = measure()
        row = bench(name, args.steps, device)
        after = measure()
        peak = {dt: (before[dt] + after[dt]) / 2 for dt in before}
        row.update(peak_before=before, peak_after=after, peak_used=peak,
                   mfu_vs_fp32_peak=row["model_flops_per_s"] / peak["float32"],
                   mfu_vs_bf16_peak=row["model_flops_per_s"] / peak["bfloat16"])
        rows.append(row)
        print(f"{name}: matmul peak fp32 {before['float32'] / 1e9:.1f} -> {after['float32'] / 1e9:.1f} GFLOP/s, "
              f"bf16 {before['bfloat16'] / 1e9:.1f} -> {after['bfloat16'] / 1e9:.1f} GFLOP/s (before -> after)")
    print(f"{'model':9} {'params':>10} {'dtype':>9} {'batch x len':>12} {'step s':>8} {'tokens/s':>10} "
          f"{'GFLOP/s':>8} {'MFU fp32':>9} {'MFU bf16':>9}")
    for r in rows:
        print(f"{r['model']:9} {r['params']:>10,} {r['dtype']:>9} {r['batch']:>5} x {r['length']:<5} "
              f"{r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} {r['model_flops_per_s'] / 1e9:>8.2f} "
              f"{r['mfu_vs_fp32_peak']:>9.1%} {r['mfu_vs_bf16_peak']:>9.1%}")
    result = {"benchmark": "train", "command": "python benchmarks/train.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "device": device.device_kind, "jax": jax.__version__},
              "models": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
