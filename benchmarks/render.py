"""SynthCaps render throughput: seconds of audio rendered per wall-clock second, 1 worker vs 2 workers.

Renders the same sample of the `small` config's clip specs (MIDI generation + FluidSynth + features, what one
tfds example costs) in one process and with a 2-process pool, side by side in one run.

    .venv/bin/python benchmarks/render.py [--num_clips 16] [--config small]
Writes benchmarks/results/render.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time

from musiclm_jax.data.synthcaps import builder, sources
from musiclm_jax.data.synthcaps.render import render_clip
from musiclm_jax.data.synthcaps.specs import make_specs


def _render(args):
    spec, sr, secs = args
    try:
        render_clip(spec, sr, secs)
        return secs
    except sources.SourceError:
        return 0.0


def _warm(_):
    sources.tune_ids("folk")  # the imports and corpus listing each worker pays once
    return os.getpid()


def measure(jobs, workers: int) -> dict:
    """Steady-state throughput; a pool's start-up (once per build) is reported apart."""
    startup = 0.0
    if workers == 1:
        t0 = time.perf_counter()
        audio = sum(map(_render, jobs))
        wall = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_warm, range(workers), chunksize=1)
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            audio = sum(pool.imap_unordered(_render, jobs))
            wall = time.perf_counter() - t1
    return {"workers": workers, "clips": len(jobs), "audio_seconds": audio, "wall_seconds": round(wall, 3),
            "pool_startup_seconds": round(startup, 3), "audio_seconds_per_wall_second": round(audio / wall, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="small", choices=sorted(builder.CORPUS_CONFIGS))
    p.add_argument("--num_clips", type=int, default=16)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "render.json"))
    args = p.parse_args()
    cfg = builder.CORPUS_CONFIGS[args.config]
    specs = make_specs(cfg)
    step = max(1, len(specs) // args.num_clips)  # an even sample across the config (all sources, both soundfonts)
    sample = specs[::step][: args.num_clips]
    jobs = [(s, cfg.sample_rate, cfg.clip_seconds) for s in sample]
    load = os.getloadavg()[0]
    _render(jobs[0])  # warm the OS file cache (soundfonts, music21 corpus) so both runs start equal
    runs = [measure(jobs, 1), measure(jobs, 2)]
    result = {
        "benchmark": "synthcaps_render", "config": cfg.name, "sample_rate": cfg.sample_rate,
        "clip_seconds": cfg.clip_seconds, "sources": sorted({s.source for s in sample}),
        "soundfonts": sorted({s.soundfont for s in sample}), "runs": runs,
        "speedup_2_workers": round(runs[1]["audio_seconds_per_wall_second"] / runs[0]["audio_seconds_per_wall_second"], 3),
        "cpu_count": os.cpu_count(), "load_average_1min": round(load, 2), "machine": platform.machine(), "python": platform.python_version(),
        "command": f"python benchmarks/render.py --config {args.config} --num_clips {args.num_clips}",
    }
    for r in runs:
        print(f"{r['workers']} worker(s): {r['clips']} clips, {r['audio_seconds']:.0f} s of audio in "
              f"{r['wall_seconds']:.1f} s wall = {r['audio_seconds_per_wall_second']:.2f} s audio / s")
    print(f"2 workers vs 1: x{result['speedup_2_workers']:.2f} (on {os.cpu_count()} CPU cores, load average "
          f"{result['load_average_1min']:.1f} before the run; pool start-up {runs[1]['pool_startup_seconds']:.1f} s)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
