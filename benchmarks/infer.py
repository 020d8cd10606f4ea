"""Batch decoding speed: prompts per wall second and real-time factor of `musiclm-jax infer` (run_infer: the whole
job, wav and token files included) at several --batch_size, with tiny random parts (CPU) or a model directory.

    .venv/bin/python benchmarks/infer.py --prompts 32 --duration 1.0 --batches 1 8
    .venv/bin/python benchmarks/infer.py --model_dir weights/musiclm --prompts 16 --duration 5 --batches 1 8

Per batch size: one warm-up job (compiles), then a timed job into a fresh directory. Writes
benchmarks/results/infer.json (infer_<model>.json with --model_dir).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=32, help="prompts per timed job")
    p.add_argument("--duration", type=float, default=1.0, help="seconds of audio per prompt")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--model_dir", default=None, help="a MusicLM directory (default: tiny random parts)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import jax

    from musiclm_jax import pipeline
    from musiclm_jax.batch_decode import run_infer

    lm = pipeline.MusicLM.from_pretrained(args.model_dir) if args.model_dir else pipeline.tiny_random(0)
    root = tempfile.mkdtemp(prefix="infer_bench_")
    prompts = os.path.join(root, "prompts.jsonl")
    with open(prompts, "w") as f:
        for i in range(args.prompts):
            f.write(json.dumps({"prompt": f"a calm piano piece number {i}", "id": f"p{i:04d}"}) + "\n")
    rows = []
    for b in args.batches:
        common = dict(duration_s=args.duration, batch_size=b, chunk_size=max(b, 16), log=lambda _: None)
        run_infer(lm, prompts, os.path.join(root, f"warm{b}"), **common)  # compiles this batch size's programs
        t0 = time.perf_counter()
        summary = run_infer(lm, prompts, os.path.join(root, f"timed{b}"), **common)
        wall = time.perf_counter() - t0
        if summary.get("failed"):
            raise SystemExit(f"batch {b}: {summary['failed']} prompts failed")
        row = {"batch": b, "prompts": args.prompts, "wall_s": wall, "prompts_per_s": args.prompts / wall,
               "rtf": args.prompts * args.duration / wall}
        rows.append(row)
        print(f"batch {b}: {row['prompts_per_s']:.2f} prompts/s, {row['rtf']:.2f}x real time")
    name = os.path.basename(os.path.normpath(args.model_dir)) if args.model_dir else None
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"infer_{name}.json" if name else "infer.json")
    result = {"name": "infer", "model": args.model_dir or "tiny random parts (pipeline.tiny_random)",
              "duration_s": args.duration, "device": str(jax.devices()[0]), "machine": platform.machine(),
              "rows": rows, "command": " ".join(["benchmarks/infer.py", *(sys.argv[1:] if argv is None else argv)])}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
