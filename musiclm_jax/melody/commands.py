"""`musiclm-jax melody render-bank | train | eval`: the melody embedder's data, training and retrieval."""
from __future__ import annotations

import argparse
import json
import os

from musiclm_jax.train import gin_utils
from musiclm_jax.train.steps import add_steps_argument


def register(subparsers) -> None:
    m = subparsers.add_parser("melody", help="the melody embedder: rendition bank, training, retrieval eval")
    sub = m.add_subparsers(dest="melody_command", required=True, metavar="ACTION")
    b = sub.add_parser("render-bank", help="render SynthCaps lead lines in every timbre (+ transposed copies)")
    b.add_argument("--config", required=True, help="a built SynthCaps config")
    b.add_argument("--data_dir", required=True)
    b.add_argument("--split", action="append", default=None, help="train, validation, test (repeatable; default all)")
    b.add_argument("--limit", type=int, default=None, help="at most this many clips per split")
    b.add_argument("--seconds", type=float, default=4.0, help="rendition length (the clip's first seconds)")
    b.add_argument("--bank_dir", required=True)
    b.set_defaults(func=render_bank)

    t = sub.add_parser("train", help="train the embedder on a bank (shared trainer, resumable)")
    gin_utils.add_gin_arguments(t, "gin file (repeatable); default gin/experiments/melody_tiny_synthcaps.gin")
    t.add_argument("--model_dir", default=None)
    t.add_argument("--bank_dir", required=True)
    add_steps_argument(t)
    t.set_defaults(func=train)

    q = sub.add_parser("fit-quantizer", help="fit the RVQ melody tokens on the embeddings of a bank's renditions")
    q.add_argument("--model_dir", required=True)
    q.add_argument("--bank_dir", required=True)
    q.add_argument("--split", default="train")
    q.set_defaults(func=fit_quantizer)

    e = sub.add_parser("eval", help="held-out retrieval: the same line in another sound among 100 candidates")
    e.add_argument("--model_dir", required=True)
    e.add_argument("--bank_dir", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--candidates", type=int, default=100)
    e.add_argument("--out", default=None, help="JSON results (default out/eval/<model folder>/melody_<split>.json)")
    e.set_defaults(func=evaluate)


def render_bank(args: argparse.Namespace) -> dict:
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips
    from musiclm_jax.melody.data import build_bank

    report = {}
    for split in args.split or ["train", "validation", "test"]:
        clips = synthcaps_clips(split=split, config=args.config, data_dir=os.path.expanduser(args.data_dir),
                                limit=args.limit, extra_keys=("lead_notes", "clip_id"))
        report[split] = build_bank(clips, args.bank_dir, split, seconds=args.seconds)
        print(f"{split}: {report[split]['lines']} lead lines -> {report[split]['path']}; skipped "
              f"{len(report[split]['skipped'])}")
    return report


def train(args: argparse.Namespace) -> dict:
    from musiclm_jax.train.launch import done_line, launch

    bindings = list(args.gin_bindings) + [f"melody_triplets.bank_dir = {os.path.expanduser(args.bank_dir)!r}"]
    summary = launch("musiclm_jax.train.trainer:train", args.gin_file or ["experiments/melody_tiny_synthcaps.gin"],
                     bindings, args.gin_search_path, registrations=("musiclm_jax.melody.family",
                                                                    "musiclm_jax.melody.data"),
                     model_dir=args.model_dir, steps=args.steps)
    print(done_line(summary, "loss", "triplet_accuracy"))
    return {k: v for k, v in summary.items() if k != "state"}


def fit_quantizer(args: argparse.Namespace) -> dict:
    """Every window (at the embedder's stride) of every timbre's rendition in the bank -> RVQ fit -> saved."""
    import numpy as np

    from musiclm_jax.melody.api import Melody, windows
    from musiclm_jax.melody.data import load_bank

    audio, _, meta = load_bank(args.bank_dir, args.split)
    mel = Melody.from_checkpoint(args.model_dir)
    timbre_audio = audio[:, :len(meta["timbres"])].reshape(-1, audio.shape[-1]).astype(np.float32) / 32768.0
    emb = mel.embed_batch(np.concatenate([windows(w, mel.cfg) for w in timbre_audio]))
    report = mel.fit_quantizer(emb)
    path = mel.save_quantizer(args.model_dir)
    print(f"melody quantizer {mel.cfg.rvq_levels} x {mel.cfg.rvq_codebook_size} on {len(emb)} window embeddings: "
          f"cosine lost {report['cosine_lost']:.4f}; saved to {path}")
    return report


def evaluate(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import default_output
    from musiclm_jax.melody.api import Melody, chroma_embed, retrieval
    from musiclm_jax.melody.data import load_bank

    audio, _, meta = load_bank(args.bank_dir, args.split)
    mel = Melody.from_checkpoint(args.model_dir)
    timbres, w = len(meta["timbres"]), mel.cfg.window_samples
    report = retrieval(mel.embed_batch, audio, timbres, w, args.candidates)
    report["baselines"] = {"chroma": retrieval(lambda x: chroma_embed(x, mel.cfg.sample_rate), audio, timbres, w,
                                               args.candidates)}
    out = args.out or default_output(args.model_dir, f"melody_{args.split}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"melody retrieval ({args.split}, {report['lines']} lines, {report['candidates']} candidates): top-1 "
          f"{report['top1']:.3f} (chance {report['chance_top1']:.3f}), same line over its transposed copies "
          f"{report['transposition_accuracy']:.3f}; chroma baseline top-1 {report['baselines']['chroma']['top1']:.3f}, "
          f"transposition {report['baselines']['chroma']['transposition_accuracy']:.3f}; {out}")
    return report
