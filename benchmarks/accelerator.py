"""Accelerator figures in one prepared run: paper-size training MFU, decode against the memory roofline, the paper
codec, and the quickstart parts' step rates (to plan a recipe run in accelerator minutes).

    .venv/bin/python benchmarks/accelerator.py --budget_s 480      # a GPU node or TPU VM: the figures below
    .venv/bin/python benchmarks/accelerator.py --cpu_small         # the same code at tiny sizes (the test suite)

In one process, in this order (most wanted first, so a run cut short by --budget_s keeps the important ones):
1. peaks: the device's bf16 / fp32 matmul FLOP/s and memory read bandwidth, measured here (MFU and roofline
   denominators), not a datasheet's.
2. lm_train: the stage LM `large` (paper size, bf16 activations) training step through the trainer (Adafactor):
   tokens/s and MFU vs the measured bf16 peak, at the largest batch of --lm_batches that fits, for each layer
   choice (scan_layers + remat 'full' / 'dots' / none, and the unscanned loop).
3. decode: `large` with the KV cache at batch 1, 16, 64 (bf16 weights and activations): tokens/s against the
   memory-bandwidth bound (weights + K/V bytes per step / measured read bandwidth) -> fraction of the roofline.
4. codec_paper: gin/models/codec_paper.gin encode / decode real-time factor and a training step's throughput.
5. quickstart: steps/s of the quickstart stage LMs (their gin experiments' batch and lengths) and codec.

The JSON is rewritten after every section, so a run stopped by a time limit still leaves what it measured. A section
that does not start before the budget runs out is recorded as skipped. Writes benchmarks/results/accelerator.json
(--out to change; --cpu_small writes accelerator_cpu_small.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks import codec as codec_bench  # noqa: E402
from benchmarks import decode as decode_bench  # noqa: E402
from benchmarks._flops import matmul_peak, read_bandwidth  # noqa: E402
from benchmarks.train import family_from_gin, time_train_steps  # noqa: E402
from musiclm_jax.lm import transformer as tr  # noqa: E402
from musiclm_jax.lm.models import TokenLM  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (scan_layers, remat): the layer choices of the paper-size training step, the likeliest best first. cpu_small
# runs every section, smaller (one quickstart stage; codec speed without its training step).
LAYER_CHOICES = ((True, "full"), (True, "dots"), (True, "none"), (False, "none"))
SIZES = {
    "full": dict(lm="large", lm_length=1024, lm_batches=(256, 128, 64, 32, 16, 8, 4, 2, 1), lm_steps=5,
                 decode_batches=(1, 16, 64), decode_prompt=256, decode_new=128, matmul_n=8192,
                 bandwidth_bytes=1 << 30, codec_gin="models/codec_paper.gin", codec_seconds=2.0, codec_batch=4,
                 codec_steps=5, quickstart_steps=10, quickstart_stages=("semantic", "coarse", "fine"),
                 quickstart_codec=True),
    "cpu_small": dict(lm="tiny", lm_length=32, lm_batches=(8, 4), lm_steps=2, decode_batches=(1, 4),
                      decode_prompt=8, decode_new=8, matmul_n=256, bandwidth_bytes=1 << 22,
                      codec_gin="models/codec_tiny.gin", codec_seconds=0.25, codec_batch=1, codec_steps=0,
                      quickstart_steps=1, quickstart_stages=("coarse",), quickstart_codec=False),
}
QUICKSTART_STAGES = {"semantic": (5, 150), "coarse": (55, 200), "fine": (201, 200)}  # gin experiments' lengths
QUICKSTART_BATCH = 16


def _is_oom(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def peaks(size: dict, device) -> dict:
    return {"bf16_flops": matmul_peak("bfloat16", n=size["matmul_n"], device=device),
            "fp32_flops": matmul_peak("float32", n=size["matmul_n"], device=device),
            "read_bytes_per_s": read_bandwidth(size["bandwidth_bytes"], device=device)}


def lm_train(size: dict, device, peak: dict) -> list[dict]:
    rows = []
    for scan, remat in LAYER_CHOICES:
        cfg = tr.preset(size["lm"], dtype="bfloat16", dropout_rate=0.0, scan_layers=scan, remat=remat,
                        max_len=max(size["lm_length"], 64))
        row = {"scan_layers": scan, "remat": remat, "length": size["lm_length"]}
        for batch in size["lm_batches"]:
            try:
                row.update(time_train_steps(TokenLM(config=cfg), batch, size["lm_length"], size["lm_steps"],
                                            device))
            except Exception as e:  # noqa: BLE001 -- out of memory: the next smaller batch
                if not _is_oom(e):
                    raise
                row.setdefault("out_of_memory_at", []).append(batch)
                continue
            row["mfu_vs_bf16_peak"] = row["model_flops_per_s"] / peak["bf16_flops"]
            break
        rows.append(row)
        print("lm_train", json.dumps(row), flush=True)
    return rows


def decode(size: dict, device, peak: dict) -> list[dict]:
    cache_len = size["decode_prompt"] + size["decode_new"]
    cfg = tr.preset(size["lm"], dtype="bfloat16", param_dtype="bfloat16", dropout_rate=0.0, max_len=cache_len)
    rows = []
    for batch in size["decode_batches"]:
        with jax.default_device(device):
            row = {"batch": batch, "cache_len": cache_len,
                   **decode_bench.time_jax(cfg, batch, size["decode_prompt"], size["decode_new"], True, 2)}
        row.update(decode_bench.roofline(row, peak["read_bytes_per_s"]))
        rows.append(row)
        print("decode", json.dumps(row), flush=True)
    return rows


def codec_paper(size: dict) -> dict:
    config = codec_bench.codec_config(size["codec_gin"])
    speed = codec_bench.jax_codec_speed(config, size["codec_batch"], size["codec_seconds"], repeats=3)
    row = {"gin": f"gin/{size['codec_gin']}", "batch": size["codec_batch"], "seconds": size["codec_seconds"], **speed}
    if size["codec_steps"]:  # (cpu_small: its two compiles would take minutes of the suite)
        row["train"] = codec_bench.train_speed(config, size["codec_batch"],
                                               int(size["codec_seconds"] * config.sample_rate), size["codec_steps"])
    return row


def quickstart(size: dict, device) -> dict:
    out = {}
    for stage in size["quickstart_stages"]:
        inputs, targets = QUICKSTART_STAGES[stage]
        family = family_from_gin("models/stage_quickstart.gin", bindings=[f"STAGE = '{stage}'"])
        row = time_train_steps(family, QUICKSTART_BATCH, inputs + targets, size["quickstart_steps"], device)
        out[f"stage_{stage}"] = {"batch": QUICKSTART_BATCH, "length": inputs + targets,
                                 "steps_per_s": 1.0 / row["step_s"], **row}
    if size["quickstart_codec"]:
        config = codec_bench.codec_config("models/codec_vocos.gin")
        out["codec_vocos"] = codec_bench.train_speed(config, 8, config.sample_rate, size["quickstart_steps"])
    return out


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget_s", type=float, default=480.0, help="start no section after this many seconds")
    p.add_argument("--cpu_small", action="store_true", help="tiny sizes: the same code in seconds (the test suite)")
    p.add_argument("--sections", default="peaks,lm_train,decode,codec_paper,quickstart")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    size = SIZES["cpu_small" if args.cpu_small else "full"]
    out_path = args.out or os.path.join(RESULTS, "accelerator_cpu_small.json" if args.cpu_small
                                        else "accelerator.json")
    device = jax.devices()[0]
    t0 = time.perf_counter()
    result = {"benchmark": "accelerator", "command": " ".join(["python", "benchmarks/accelerator.py", *(argv or
              sys.argv[1:])]), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": device.device_kind, "platform": jax.default_backend(), "device_count": jax.device_count(),
              "jax": jax.__version__, "machine": platform.machine(), "budget_s": args.budget_s,
              "sizes": "cpu_small" if args.cpu_small else "full", "sections": {}}
    peak = None
    for name in [s for s in args.sections.split(",") if s]:
        start = time.perf_counter()
        if start - t0 > args.budget_s:
            result["sections"][name] = {"skipped": f"budget of {args.budget_s:g} s spent"}
            _write(out_path, result)
            continue
        try:
            if peak is None and name in ("peaks", "lm_train", "decode"):
                peak = result["sections"]["peaks"] = peaks(size, device)
            if name == "lm_train":
                result["sections"][name] = lm_train(size, device, peak)
            elif name == "decode":
                result["sections"][name] = decode(size, device, peak)
            elif name == "codec_paper":
                result["sections"][name] = codec_paper(size)
            elif name == "quickstart":
                result["sections"][name] = quickstart(size, device)
            elif name != "peaks":
                raise SystemExit(f"unknown section {name!r}: use peaks, lm_train, decode, codec_paper, quickstart")
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 -- one failed section must not lose the others' figures
            result["sections"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:500]}",
                                        "traceback": traceback.format_exc()[-3000:]}
        result.setdefault("section_seconds", {})[name] = time.perf_counter() - start
        _write(out_path, result)
        print(f"{name}: {result['section_seconds'][name]:.1f} s -> {out_path}", flush=True)
    failed = [n for n, v in result["sections"].items() if isinstance(v, dict) and "error" in v]
    print(f"wrote {out_path}" + (f"; sections that failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
