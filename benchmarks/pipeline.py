"""Text-to-music speed: real-time factor (seconds of audio per wall second) of the whole pipeline and per stage,
and target tokens/s per stage LM, at batch 1 and 8, with tiny random parts (CPU) -- random weights are fine for speed.

    .venv/bin/python benchmarks/pipeline.py --duration 1.0 --batches 1 8

Each configuration runs once to compile, then `--repeats` timed runs (median). Writes benchmarks/results/pipeline.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time



def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1.0, help="seconds of audio per prompt")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/pipeline.json")
    args = p.parse_args(argv)

    import jax

    from musiclm_jax import pipeline

    lm = pipeline.tiny_random(0)
    n_sem, n_ac = lm._frames(args.duration)
    tokens = {"semantic": n_sem, "coarse": n_ac * lm.sizes.coarse_levels, "fine": n_ac * lm.sizes.fine_levels}
    rows = []
    for b in args.batches:
        prompts = [f"prompt {i}" for i in range(b)]
        lm.generate_full(prompts, args.duration, progress=False)  # compile
        runs = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            g = lm.generate_full(prompts, args.duration, seed=r + 1, progress=False)
            runs.append((time.perf_counter() - t0, g.timings))
        total, timings = sorted(runs, key=lambda x: x[0])[len(runs) // 2]
        row = {"batch": b, "seconds_of_audio": args.duration * b, "wall_s": total,
               "rtf": args.duration * b / total,
               "stages": {k: {"wall_s": v, "rtf": args.duration * b / v,
                              **({"tokens_per_s": tokens[k] * b / v} if k in tokens else {})}
                          for k, v in timings.items()}}
        rows.append(row)
        print(f"batch {b}: {row['rtf']:.3f} s audio / wall s; " + ", ".join(
            f"{k} {s['rtf']:.2f}x" + (f" ({s['tokens_per_s']:.0f} tok/s)" if "tokens_per_s" in s else "")
            for k, s in row["stages"].items()))
    result = {"name": "pipeline", "config": "tiny random parts (pipeline.tiny_random)", "duration_s": args.duration,
              "sample_rate": lm.sample_rate, "windows": dataclasses.asdict(lm.windows),
              "device": str(jax.devices()[0]), "machine": platform.machine(), "rows": rows,
              "command": " ".join(["benchmarks/pipeline.py", *(sys.argv[1:] if argv is None else argv)])}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
