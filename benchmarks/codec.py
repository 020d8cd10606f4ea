"""Codec speed on this machine: encode/decode real-time factor (seconds of audio per wall second) for the tiny,
the frame-rate (`gin/models/codec_vocos.gin`: STFT encoder + Vocos decoder) and the paper configs, side by side with the `encodec` package's SEANet + RVQ at the same strides/channels (PyTorch, random
weights, run in the Python 3.11 peer venv), and training steps/s of the tiny config (reconstruction phase and GAN
phase). Writes benchmarks/results/codec.json.

    make bench-peers     # once: the peer venv benchmarks/peers/.venv (CPU torch, encodec)
    .venv/bin/python benchmarks/codec.py [--rounds 3] [--quick] [--peer_python PATH]

Ours and the peer alternate (`--rounds`: all of ours, then the peer, then ours again ...), and the quoted ratio is the
median of the per-round ratios, so a load change on this shared machine hits both sides. encodec's torchaudio import
is stubbed. Without the peer venv the peer rows are skipped and the JSON says why.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "codec.json")

# The peer: encodec's SEANet encoder/decoder configured like ours (causal, dilations 1/3/9 with 3 residual units of
# kernel 7, no LSTM, no channel compression in residual units) plus its RVQ; run in a separate interpreter.
PEER_SCRIPT = r"""
import json, sys, time, types
import torch
# encodec imports torchaudio only for file I/O helpers we never call; a stand-in module avoids installing it.
sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
from encodec.modules import SEANetEncoder, SEANetDecoder
from encodec.quantization import ResidualVectorQuantizer
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
out = {"torch": torch.__version__}
for cfg in json.loads(sys.argv[1]):
    kw = dict(channels=1, dimension=cfg["embed_dim"], n_filters=cfg["channels"], n_residual_layers=3,
              ratios=list(reversed(cfg["strides"])), kernel_size=7, residual_kernel_size=7, last_kernel_size=3,
              dilation_base=3, causal=True, norm="none", compress=1, lstm=0, true_skip=True)
    enc, dec = SEANetEncoder(**kw).eval(), SEANetDecoder(**kw).eval()
    rvq = ResidualVectorQuantizer(dimension=cfg["embed_dim"], n_q=cfg["num_levels"], bins=cfg["codebook_size"]).eval()
    x = torch.randn(cfg["batch"], 1, int(cfg["seconds"] * cfg["sample_rate"])) * 0.1
    def encode():
        return rvq.encode(enc(x), sample_rate=cfg["sample_rate"])
    with torch.inference_mode():
        codes = encode()
        def decode():
            return dec(rvq.decode(codes))
        row = {"params": sum(p.numel() for m in (enc, dec) for p in m.parameters())}
        for name, fn in (("encode", encode), ("decode", decode)):
            fn()
            times = []
            for _ in range(cfg["repeats"]):
                t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
            row[name + "_seconds"] = sorted(times)[len(times) // 2]
            row[name + "_rtf"] = cfg["batch"] * cfg["seconds"] / row[name + "_seconds"]
    out[cfg["name"]] = row
print("PEER_JSON " + json.dumps(out))
"""


def _median_time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def jax_codec_speed(config, batch: int, seconds: float, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from musiclm_jax.codec.model import build_generator, jit_decode, jit_encode, param_count

    model = build_generator(config)
    n = int(seconds * config.sample_rate)
    wave = 0.1 * jax.random.normal(jax.random.key(0), (batch, n))
    codes = jit_encode(model, wave)
    row = {"params": param_count(model.encoder) + param_count(model.decoder)}
    for name, fn in (("encode", lambda: jax.block_until_ready(jit_encode(model, wave))),
                     ("decode", lambda: jax.block_until_ready(jit_decode(model, jnp.asarray(codes))))):
        row[name + "_seconds"] = _median_time(fn, repeats)
        row[name + "_rtf"] = batch * seconds / row[name + "_seconds"]
    return row


def train_speed(config, batch: int, num_samples: int, steps: int) -> dict:
    """Train steps/s of the codec family through the shared trainer, before and after the discriminator starts."""
    import jax

    from musiclm_jax.codec.data import synthetic_tones
    from musiclm_jax.codec.family import CodecFamily
    from musiclm_jax.train import partitioning
    from musiclm_jax.train.trainer import Trainer

    family = CodecFamily(config=config, disc_start_step=steps + 1)
    trainer = Trainer(family, partitioning.make_mesh(devices=jax.devices()[:1]))
    state = trainer.init_state()
    data = synthetic_tones(batch_size=batch, num_samples=num_samples, sample_rate=config.sample_rate)
    batches = [trainer.device_batch(next(data)) for _ in range(2)]
    out = {"batch": batch, "clip_seconds": num_samples / config.sample_rate}
    for phase, count in (("reconstruction", steps), ("gan", steps)):
        state, m = trainer.train_step(state, batches[0])  # first step of a phase: compile / branch warm-up
        jax.block_until_ready(m)
        t = time.perf_counter()
        for i in range(count):
            state, m = trainer.train_step(state, batches[i % 2])
        jax.block_until_ready(m)
        elapsed = time.perf_counter() - t
        assert float(m["disc_active"]) == (1.0 if phase == "gan" else 0.0)
        out[phase + "_steps_per_sec"] = count / elapsed
        out[phase + "_audio_rtf"] = count * batch * num_samples / config.sample_rate / elapsed
    return out


def run_peer(python: str, configs: list[dict], threads: int) -> dict:
    if not os.path.exists(python):
        return {"skipped": f"peer interpreter {python} not found (see this script's docstring to make it)"}
    proc = subprocess.run([python, "-c", PEER_SCRIPT, json.dumps(configs), str(threads)], capture_output=True,
                          text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("PEER_JSON "):
            return json.loads(line[len("PEER_JSON "):])
    return {"skipped": f"peer failed: {proc.stderr.strip()[-400:]}"}


def codec_config(model_gin: str = "models/codec_vocos.gin"):
    """The CodecConfig a gin model file configures (gin's state is cleared before and after)."""
    import gin

    from musiclm_jax.codec.model import CodecConfig
    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config([model_gin], [])
        return CodecConfig()
    finally:
        gin.clear_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer_python", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers",
                                                              ".venv", "bin", "python"))
    parser.add_argument("--rounds", type=int, default=3, help="ours / peer alternations (median ratio is quoted)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and train steps")
    parser.add_argument("--no_train", action="store_true", help="skip the training-speed measurement")
    args = parser.parse_args()

    import jax

    from musiclm_jax.codec.model import CodecConfig

    repeats = 3 if args.quick else 5
    tiny = CodecConfig()
    paper = codec_config("models/codec_paper.gin")
    vocos = codec_config("models/codec_vocos.gin")
    cases = [("tiny", tiny, 1, 4.0), ("vocos", vocos, 1, 4.0), ("paper", paper, 1, 2.0)]
    peer_cases = [c for c in cases if c[0] != "vocos"]  # encodec has no frame-rate / iSTFT decoder
    threads = os.cpu_count() or 1
    results = {"device": jax.devices()[0].device_kind, "cpu_threads": threads, "rtf": "seconds of audio per "
               "wall second (higher is faster; >1 is faster than real time)", "jax": {}, "ratio_jax_over_peer": {}}
    peer_cfgs = [dict(name=name, batch=batch, seconds=seconds, repeats=repeats, sample_rate=c.sample_rate,
                      channels=c.channels, strides=list(c.strides), embed_dim=c.embed_dim, num_levels=c.num_levels,
                      codebook_size=c.codebook_size) for name, c, batch, seconds in peer_cases]
    rounds = []  # [(ours, peer)], alternating
    for r in range(max(1, args.rounds)):
        ours = {name: dict(jax_codec_speed(config, batch, seconds, repeats), batch=batch, seconds=seconds)
                for name, config, batch, seconds in cases}
        print(f"round {r} jax", json.dumps(ours), flush=True)
        peer = run_peer(args.peer_python, peer_cfgs, threads)
        print(f"round {r} encodec peer", json.dumps(peer), flush=True)
        rounds.append((ours, peer))
        if "skipped" in peer:
            break
    keys = ("encode_rtf", "decode_rtf")
    median = lambda values: float(np.median(values))  # noqa: E731
    results["jax"] = {name: {**rounds[0][0][name], **{k: median([o[name][k] for o, _ in rounds]) for k in keys}}
                      for name, *_ in cases}
    results["encodec_peer"] = rounds[-1][1] if "skipped" in rounds[-1][1] else {
        "torch": rounds[0][1].get("torch"),
        **{name: {**rounds[0][1][name], **{k: median([p[name][k] for _, p in rounds]) for k in keys}}
           for name, *_ in peer_cases}}
    results["rounds"] = len(rounds)
    for name, *_ in peer_cases:
        if all(name in p for _, p in rounds):
            per_round = {k: [o[name][k] / p[name][k] for o, p in rounds] for k in keys}
            results["ratio_jax_over_peer"][name] = {k: median(v) for k, v in per_round.items()}
            results["ratio_jax_over_peer"][name]["per_round"] = per_round
    if not args.no_train:
        results["train_tiny"] = train_speed(tiny, batch=8, num_samples=8000, steps=5 if args.quick else 10)
        print("train tiny", json.dumps(results["train_tiny"]), flush=True)
        results["train_vocos"] = train_speed(vocos, batch=8, num_samples=16000, steps=5 if args.quick else 10)
        print("train vocos", json.dumps(results["train_vocos"]), flush=True)
    elif os.path.exists(RESULTS):  # --no_train keeps the training figures of the last run that measured them
        with open(RESULTS) as f:
            earlier = json.load(f)
        for key in ("train_tiny", "train_vocos"):
            if key in earlier:
                results[key] = {**earlier[key], "from_an_earlier_run": True}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
