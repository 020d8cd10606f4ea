"""Tokenization throughput: seconds of audio per wall second, per tokenizer (in process) and for the whole Beam
cache job with 1 and 2 DirectRunner workers. Tiny random tokenizers (`random:0`) unless $MUSICLM_*_DIR are set.

    .venv/bin/python benchmarks/tokenization.py [--clips 8] [--seconds 4] [--workers 1,2]

Writes benchmarks/results/tokenize.json. The Beam figure includes process start-up and the tokenizers' build
(and, with 2 workers, one build per worker), so it is an end-to-end job rate on this small corpus.
"""
from __future__ import annotations

import argparse
import json
import os
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
    args = p.parse_args()

    from musiclm_jax.data import tokenize as tok_lib
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

    from tasks import cache
    root = tempfile.mkdtemp(prefix="tokenize_bench_")
    tfds_dir = os.path.join(root, "tfds")
    b = builder.Synthcaps(config=builder.make_config("tiny", clip_seconds=4, num_scores=4), data_dir=tfds_dir)
    b.download_and_prepare()
    audio_s = sum(s.num_examples for s in b.info.splits.values()) * 4.0
    result["beam"] = {}
    for n in [int(w) for w in args.workers.split(",")]:
        t = time.perf_counter()
        cache.main(["--tasks=synthcaps_tiny_semantic", f"--output_cache_dir={os.path.join(root, f'cache{n}')}",
                    f"--tfds_data_dir={tfds_dir}", f"--num_workers={n}", "--module_import=tasks.musiclm_tasks"])
        wall = time.perf_counter() - t
        result["beam"][f"{n}_workers"] = {"audio_seconds": audio_s, "wall_seconds": wall,
                                          "audio_s_per_wall_s": audio_s / wall}
    if len(result["beam"]) > 1:
        walls = [v["wall_seconds"] for v in result["beam"].values()]
        result["beam"]["speedup_last_vs_first"] = walls[0] / walls[-1]
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tokenize.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
