"""Tokenization throughput: seconds of audio per wall second, per tokenizer (in process) and for the whole Beam
cache job with 1 and 2 DirectRunner workers. Tiny random tokenizers (`random:0`) unless $MUSICLM_*_DIR are set.

    .venv/bin/python benchmarks/tokenization.py [--clips 8] [--seconds 4] [--workers 1,2]
    .venv/bin/python benchmarks/tokenization.py --quickstart_dir out/quickstart   # after `make quickstart`

Writes benchmarks/results/tokenize.json (tokenize_quickstart.json with --quickstart_dir). The Beam figure includes
process start-up and the tokenizers' build (and, with 2 workers, one build per worker), so it is an end-to-end job
rate. On the tiny 32 s corpus that start-up is all there is; `--quickstart_dir` times the quickstart's real job
instead (600 SynthCaps clips = 3,000 s of audio, its trained tokenizers, the three quickstart stage tasks).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def per_tokenizer(toks, waves, sr) -> dict:
    calls = {"codec": lambda w: toks.codec.encode(w, sr), "semantic": lambda w: toks.semantic.tokens(w, sr),
             "mulan": lambda w: toks.mulan.tokens_from_audio(w, sr)}
    audio_s = sum(len(w) for w in waves) / sr
    out = {}
    for name, fn in calls.items():
        fn(waves[0])  # compile
        t = time.perf_counter()
        for w in waves:
            fn(w)
        wall = time.perf_counter() - t
        out[name] = {"audio_seconds": audio_s, "wall_seconds": wall, "audio_s_per_wall_s": audio_s / wall}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=8, help="in-process clips for the per-tokenizer figures")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--workers", default="1,2", help="Beam worker counts to time")
    p.add_argument("--quickstart_dir", default=None,
                   help="time the Beam job on a built quickstart work dir (its tfds corpus and tokenizers) instead")
    args = p.parse_args()
    if args.quickstart_dir:
        return quickstart_job(args.quickstart_dir, [int(w) for w in args.workers.split(",")])

    from musiclm_jax import tokenizers as tok_lib
    from musiclm_jax.data.synthcaps import builder

    for k, v in tok_lib.TokenizerSpec.tiny().to_env().items():
        os.environ.setdefault(k, v)
    spec = tok_lib.TokenizerSpec.from_env()
    t = time.perf_counter()
    toks = tok_lib.Tokenizers.get(spec)
    build_s = time.perf_counter() - t
    sr = 16000
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.normal(size=int(args.seconds * sr))).astype(np.float32) for _ in range(args.clips)]
    result = {"spec": spec.__dict__, "tokenizer_build_seconds": build_s,
              "per_tokenizer": per_tokenizer(toks, waves, sr)}

    from musiclm_jax.tasks import cache
    root = tempfile.mkdtemp(prefix="tokenize_bench_")
    tfds_dir = os.path.join(root, "tfds")
    b = builder.Synthcaps(config=builder.make_config("tiny", clip_seconds=4, num_scores=4), data_dir=tfds_dir)
    b.download_and_prepare()
    audio_s = sum(s.num_examples for s in b.info.splits.values()) * 4.0
    result["beam"] = {}
    for n in [int(w) for w in args.workers.split(",")]:
        t = time.perf_counter()
        cache.main(["--tasks=synthcaps_tiny_semantic", f"--output_cache_dir={os.path.join(root, f'cache{n}')}",
                    f"--tfds_data_dir={tfds_dir}", f"--num_workers={n}", "--module_import=musiclm_jax.tasks.musiclm_tasks"])
        wall = time.perf_counter() - t
        result["beam"][f"{n}_workers"] = {"audio_seconds": audio_s, "wall_seconds": wall,
                                          "audio_s_per_wall_s": audio_s / wall}
    write(result, "tokenize.json")


def quickstart_job(work_dir: str, workers: list[int]) -> None:
    """The quickstart's tokenize step (same tasks, gin file and tokenizers) into fresh caches, per worker count."""
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips
    from musiclm_jax.quickstart import SYNTHCAPS_CONFIG

    tfds_dir = os.path.join(work_dir, "tfds")
    splits = {s: synthcaps_clips(split=s, config=SYNTHCAPS_CONFIG, data_dir=tfds_dir) for s in ("train", "validation",
                                                                                              "test")}
    audio_s = sum(len(c["audio"]) / c["sample_rate"] for clips in splits.values() for c in clips)
    bindings = [f"--gin_bindings=tasks.preprocessors.tokenizer_spec.{part} = '{os.path.join(work_dir, part)}'"
                for part in ("codec", "semantic", "mulan")]
    root = tempfile.mkdtemp(prefix="tokenize_bench_")
    result = {"work_dir": work_dir, "clips": sum(map(len, splits.values())), "beam": {}}
    for n in workers:
        cmd = [sys.executable, "-m", "musiclm_jax.tasks.cache", "--tasks=synthcaps_quickstart_.*",
               f"--output_cache_dir={os.path.join(root, f'cache{n}')}", f"--tfds_data_dir={tfds_dir}",
               f"--num_workers={n}", "--gin_file=gin/runs/tokenize_quickstart.gin", *bindings]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)  # a fresh process per run, like the quickstart
        wall = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"the cache job failed ({proc.returncode}): {proc.stderr[-2000:]}")
        result["beam"][f"{n}_workers"] = {"audio_seconds": audio_s, "wall_seconds": wall,
                                          "audio_s_per_wall_s": audio_s / wall}
    write(result, "tokenize_quickstart.json")


def write(result: dict, name: str) -> None:
    if len(result["beam"]) > 1:
        walls = [v["wall_seconds"] for v in result["beam"].values()]
        result["beam"]["speedup_last_vs_first"] = walls[0] / walls[-1]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
