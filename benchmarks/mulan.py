"""MuLan embedding throughput on this machine, side by side in one run; writes benchmarks/results/mulan.json.

    .venv/bin/python benchmarks/mulan.py [--quick] [--torch_python /tmp/minilm311/bin/python]

Times are best-of-N per call (benchmarks/_flops.py: on a shared machine other jobs only add time).
Measures, each as a fraction of an fp32 matmul timed in the same run (MFU):
  * text tower (MiniLM-L6 port): sentences/s at batch 32 (one caption, padded only to its own length);
  * audio tower, tiny (gin/models/mulan_tiny.gin) and paper (ResNet-50 on 10 s windows): windows/s and the
    real-time factor (seconds of audio embedded per second);
  * peer: the same MiniLM through sentence-transformers on PyTorch (CPU), when a Python with torch is given
    (it must not be this venv: see tests/fixtures/make_minilm_reference.py for the 3.11 venv).
FLOPs come from XLA's cost analysis of the compiled function.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._flops import matmul_peak, time_fn  # noqa: E402  (best-of-N timing, shared by every benchmark)
from musiclm_jax.mulan.audio import AudioConfig, AudioEncoder  # noqa: E402
from musiclm_jax.mulan.text import TextTokenizer, build_text_encoder, minilm_config, minilm_dir  # noqa: E402

TINY = AudioConfig(window_seconds=4.0, n_fft=512, hop_length=320, n_mels=32, stage_sizes=(1, 1, 1), width=16,
                   block="basic", groups=8)
PAPER = AudioConfig(groups=32)  # defaults: 16 kHz, 10 s, 64 mels, ResNet-50
SENTENCE = "a lively jazz tune with a walking bass and brushed drums"


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def bench_text(batch: int, repeats: int) -> dict:
    enc = build_text_encoder(minilm_config(), nnx.Rngs(0))
    graphdef, state = nnx.split(enc)
    f = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))
    # Padded to the sentence's own length, as sentence-transformers does, so both sides run the same tokens.
    ids, mask = TextTokenizer(128, pad_multiple=1)([SENTENCE] * batch)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    sec = time_fn(f, state, ids, mask, repeats=repeats)
    return {"batch": batch, "tokens": int(ids.shape[1]), "sec_per_batch": sec, "sentences_per_sec": batch / sec,
            "flops_per_batch": flops_of(f, state, ids, mask)}


def bench_audio(cfg: AudioConfig, batch: int, repeats: int) -> dict:
    with nnx.use_eager_sharding(False):
        enc = AudioEncoder(cfg, nnx.Rngs(0))
    graphdef, state = nnx.split(enc)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = jnp.asarray(0.1 * np.random.default_rng(0).normal(size=(batch, cfg.window_samples)), jnp.float32)
    sec = time_fn(f, state, x, repeats=repeats)
    params = sum(v.size for v in jax.tree.leaves(state))
    return {"batch": batch, "window_seconds": cfg.window_seconds, "params": int(params), "sec_per_batch": sec,
            "windows_per_sec": batch / sec, "real_time_factor": batch * cfg.window_seconds / sec,
            "flops_per_batch": flops_of(f, state, x)}


TORCH_PEER = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(int(sys.argv[3]))
m = SentenceTransformer(sys.argv[1], device="cpu")
texts = [sys.argv[5]] * int(sys.argv[2])
m.encode(texts, batch_size=len(texts))
sec = float("inf")
for _ in range(int(sys.argv[4])):
    t0 = time.perf_counter()
    with torch.inference_mode():
        m.encode(texts, batch_size=len(texts))
    sec = min(sec, time.perf_counter() - t0)
print(json.dumps({"sec_per_batch": sec, "sentences_per_sec": len(texts) / sec, "torch": torch.__version__}))
"""


def bench_torch_peer(python: str, batch: int, repeats: int) -> dict | None:
    if not python or not os.path.exists(python):
        return None
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([python, "-c", TORCH_PEER, str(minilm_dir()), str(batch), str(os.cpu_count() or 1),
                          str(repeats), SENTENCE], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        print(f"torch peer failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip the paper-size audio tower")
    parser.add_argument("--torch_python", default="/tmp/minilm311/bin/python")
    parser.add_argument("--out", default="benchmarks/results/mulan.json")
    args = parser.parse_args()
    reps = 3 if args.quick else 10

    peak = matmul_peak("float32", repeats=reps)
    results = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
               "matmul_flops_per_sec": peak}
    results["text_minilm"] = bench_text(32, reps)
    results["audio_tiny"] = bench_audio(TINY, 8, reps)
    if not args.quick:
        results["audio_paper_resnet50"] = bench_audio(PAPER, 2, max(1, reps // 2))
    for key in ("text_minilm", "audio_tiny", "audio_paper_resnet50"):
        if key in results:
            r = results[key]
            r["flops_per_sec"] = r["flops_per_batch"] / r["sec_per_batch"]
            r["mfu_vs_matmul"] = r["flops_per_sec"] / peak
    peer = bench_torch_peer(args.torch_python, 32, reps)
    if peer:
        results["text_minilm_torch_peer"] = peer
        results["text_speed_ratio_jax_over_torch"] = (results["text_minilm"]["sentences_per_sec"]
                                                      / peer["sentences_per_sec"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
