"""Decoding speed of the stage-LM Transformer: tokens/s with and without the KV cache, against PyTorch peers.

    .venv/bin/python benchmarks/decode.py                      # tiny + mid, batch 1 and 16, peers if installed
    .venv/bin/python benchmarks/decode.py --threads 1          # everything pinned to one core (busy machine)
    make bench-peers                                           # once: the peers' own Python 3.11 venv
    .venv/bin/python benchmarks/decode.py --configs large --batches 1,16 --new-tokens 256 --no-peers  # on a GPU

Every row decodes `--new-tokens` tokens after a `--prompt-len` prompt (temperature 1, no EOS, random weights) and
reports the best of `--reps` timed runs after one warm-up (which, for JAX, compiles). "no cache" re-runs the full
forward every step: JAX over a fixed [batch, prompt + new] buffer (static shapes), the peers over the growing
sequence, so JAX's no-cache rows do up to ~2x the peers' attention/MLP work. The peers (benchmarks/peers/torch_decode.py: a plain PyTorch decoder of
the same architecture, and audiolm-pytorch's Transformer at the same d_model/layers/heads/head_dim) run in the same
invocation on the same machine, right after the JAX rows of the same config/batch/cache mode; ratios compare rows with equal config, batch and cache mode.
Real-time factor: seconds of audio per wall second at the coarse stage's token rate (50 Hz x 4 levels = 200 tok/s).
Writes benchmarks/results/decode.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks._flops import read_bandwidth  # noqa: E402
from musiclm_jax.lm import decoding, transformer as tr  # noqa: E402

ROOT = Path(__file__).resolve().parent
PEERS_PY = ROOT / "peers" / ".venv" / "bin" / "python"
COARSE_TOKENS_PER_AUDIO_S = 200.0

CONFIGS = {
    "tiny": tr.preset("tiny", dropout_rate=0.0),
    # mid: a CPU-sized stage LM; d_ff = 8/3 d_model (gated) so the MLP matches audiolm-pytorch's GEGLU width.
    "mid": tr.TransformerConfig(vocab_size=4096, num_layers=6, num_heads=8, head_dim=64, d_model=512, d_ff=1365,
                                dropout_rate=0.0, max_len=1024),
    "quickstart": None,  # the shipped coarse stage LM's architecture (gin/models/stage_quickstart.gin), built lazily
    "base": tr.preset("base", dropout_rate=0.0),
    "large": tr.preset("large", dropout_rate=0.0),
}


def config(name: str) -> tr.TransformerConfig:
    if CONFIGS[name] is None:
        from benchmarks.train import family_from_gin

        cfg = family_from_gin("models/stage_quickstart.gin", bindings=["STAGE = 'coarse'"]).config
        CONFIGS[name] = dataclasses.replace(cfg, dropout_rate=0.0)
    return CONFIGS[name]


def step_bytes(model: tr.Transformer, batch: int, cache_len: int) -> int:
    """Bytes one cached decode step must at least read: every weight once (the input embedding only for the batch's
    rows), the whole K/V buffer (attention reads the fixed-size cache) and the key positions."""
    cfg = model.cfg
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tables = [model.embed[...]] + ([model.aligned_embed[...]] if model.aligned_embed is not None else [])
    weights -= sum(t.size * t.dtype.itemsize for t in tables) - batch * cfg.d_model * model.embed[...].dtype.itemsize
    kv = 2 * cfg.num_layers * batch * cache_len * cfg.num_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    return int(weights + kv + batch * cache_len * 4)


def roofline(row: dict, bandwidth: float) -> dict:
    """The memory-bandwidth bound of a cached decode row: tokens/s if each step only moved its bytes at
    `bandwidth` (bytes/s)."""
    bound = row["batch"] * bandwidth / row["step_bytes"]
    return {"roofline_tokens_per_s": bound, "fraction_of_roofline": row["tokens_per_s"] / bound}


def time_jax(cfg, batch, prompt_len, new_tokens, use_cache, reps):
    model = tr.Transformer(cfg, rngs=nnx.Rngs(0))
    prompts = jax.random.randint(jax.random.key(1), (batch, prompt_len), 0, cfg.vocab_size, jnp.int32)
    run = lambda i: decoding.sample(model, prompts, max_new_tokens=new_tokens, rng=jax.random.key(i),
                                    temperature=1.0, use_cache=use_cache)[0].block_until_ready()
    t0 = time.perf_counter()
    run(0)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        run(i + 1)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"seconds": best, "tokens_per_s": batch * new_tokens / best, "first_call_s": compile_s,
            "step_bytes": step_bytes(model, batch, prompt_len + new_tokens)}


def peer_cfg(cfg):
    keys = ("vocab_size", "num_layers", "num_heads", "head_dim", "d_model", "d_ff", "relpos_num_buckets",
            "relpos_max_distance")
    return {k: getattr(cfg, k) for k in keys}


def run_peers(specs, threads):
    if not PEERS_PY.exists():
        print(f"peers skipped: {PEERS_PY} missing (run `make bench-peers` to build their venv)", file=sys.stderr)
        return []
    cmd = [str(PEERS_PY), str(ROOT / "peers" / "torch_decode.py"), "--spec", json.dumps(specs),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"peers failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,mid", help=f"comma list of {sorted(CONFIGS)}")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="JAX activation dtypes; the peers run float32, so ratios use the float32 rows")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--no-uncached", action="store_true", help="skip the full-forward-per-step rows")
    p.add_argument("--threads", type=int, default=0,
                   help="pin this process and the peers to the first N CPUs (0: all; 1 is steadier on a busy machine)")
    p.add_argument("--out", default=str(ROOT / "results" / "decode.json"))
    args = p.parse_args()
    names = args.configs.split(",")
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown config {n!r}: use some of {sorted(CONFIGS)}")
    batches = [int(b) for b in args.batches.split(",")]
    modes = [True] if args.no_uncached else [True, False]
    dtypes = args.dtypes.split(",")
    threads = args.threads or os.cpu_count() or 1
    if args.threads:  # before the first computation creates XLA's thread pool; the peers inherit the affinity
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])

    rows = []
    for name in names:
        base = config(name)
        for batch in batches:
            for cache in modes:
                common = dict(name=name, batch=batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                              cache=cache)
                for dtype in dtypes:
                    cfg = dataclasses.replace(base, dtype=dtype, max_len=args.prompt_len + args.new_tokens)
                    r = {"impl": f"jax-{dtype}", **common, **time_jax(cfg, batch, args.prompt_len, args.new_tokens,
                                                                       cache, args.reps)}
                    if cache:  # the roofline's bandwidth: a read pass over a buffer as big as one step's bytes
                        # (a CPU serves a model that fits its caches faster than DRAM), right after the row
                        r["read_bandwidth"] = read_bandwidth(max(r["step_bytes"], 1 << 20))
                        r.update(roofline(r, r["read_bandwidth"]))
                    rows.append(r)
                    print(json.dumps(r), flush=True)
                if args.no_peers:
                    continue
                # Peers right after the JAX rows they are compared with: a busy machine's load drifts over minutes.
                specs = [{"impl": impl, **common, "reps": args.reps, "cfg": peer_cfg(base)}
                         for impl in ("plain", "audiolm")]
                for r in run_peers(specs, threads):
                    r["impl"] = "torch-" + r["impl"]
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    dram_bandwidth = read_bandwidth()
    for r in rows:
        if "tokens_per_s" in r:
            r["rtf_coarse"] = r["tokens_per_s"] / COARSE_TOKENS_PER_AUDIO_S

    # Ratios within the run: JAX float32 over each peer, and cache over no cache.
    key = lambda r: (r["name"], r["batch"], r["cache"])
    by = {}
    for r in rows:
        if "tokens_per_s" in r:
            by.setdefault(key(r), {})[r["impl"]] = r["tokens_per_s"]
    ratios = []
    for (name, batch, cache), impls in by.items():
        for peer in ("torch-plain", "torch-audiolm"):
            if "jax-float32" in impls and peer in impls:
                ratios.append({"name": name, "batch": batch, "cache": cache, "jax_over": peer,
                               "speed_ratio": impls["jax-float32"] / impls[peer]})
        if cache and (name, batch, False) in by:
            for impl, tps in impls.items():
                if impl in by[(name, batch, False)]:
                    ratios.append({"name": name, "batch": batch, "impl": impl,
                                   "cache_speedup": tps / by[(name, batch, False)][impl]})

    print(f"\n{'config':10} {'batch':>5} {'cache':>5} {'impl':>15} {'tok/s':>10} {'RTF':>7} {'roofline':>9}")
    for r in rows:
        if "tokens_per_s" in r:
            frac = f"{r['fraction_of_roofline']:9.2f}" if "fraction_of_roofline" in r else " " * 9
            print(f"{r['name']:10} {r['batch']:5d} {str(r['cache']):>5} {r['impl']:>15} {r['tokens_per_s']:10.1f} "
                  f"{r['rtf_coarse']:7.2f} {frac}")
        else:
            print(f"{r['name']:10} {r['batch']:5d} {str(r['cache']):>5} {r['impl']:>15} error: {r.get('error')}")
    for q in ratios:
        print(json.dumps(q))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M UTC",
            time.gmtime()), "jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
            "platform": jax.default_backend(), "cpu_count": os.cpu_count(), "threads": threads,
            "load_avg_at_end": os.getloadavg(), "machine": platform.machine(),
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps,
            "dram_read_bandwidth_bytes_per_s": dram_bandwidth,
            "configs": {n: dataclasses.asdict(CONFIGS[n]) for n in names}}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
