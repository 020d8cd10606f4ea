"""`musiclm-jax data build ...`: build the SynthCaps corpus or your own audio folder as a TFDS dataset.

Imports here stay light; tensorflow-datasets and the builders load inside the handler.
"""
from __future__ import annotations

import argparse

DATASETS = ("synthcaps", "audio_captions")


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build datasets (SynthCaps corpus, your own audio + captions)")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build a TFDS dataset into --data_dir",
                       description="Examples:\n  musiclm-jax data build --dataset synthcaps --config tiny --data_dir ~/tfds\n"
                                   "  musiclm-jax data build --dataset audio_captions --config 16khz "
                                   "--data_dir ~/tfds --manual_dir ~/musiccaps",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--dataset", required=True, choices=DATASETS)
    b.add_argument("--config", default=None,
                   help="synthcaps: tiny | small | large | small_24khz_30s; audio_captions: 16khz | 24khz")
    b.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
    b.add_argument("--manual_dir", default=None, help="audio_captions: your folder of audio (+ .csv / .jsonl)")
    b.add_argument("--captions_file", default=None, help="audio_captions: which .csv/.jsonl when there are several")
    b.add_argument("--num_workers", type=int, default=1, help="synthcaps: render processes (ignored on Beam)")
    b.add_argument("--sample_rate", type=int, default=None, help="synthcaps: override the config's rate (Hz)")
    b.add_argument("--clip_seconds", type=float, default=None, help="synthcaps: override the clip length")
    b.add_argument("--num_scores", type=int, default=None, help="synthcaps: override the number of scores")
    b.add_argument("--seed", type=int, default=None, help="synthcaps: override the corpus seed")
    b.add_argument("--beam", action="store_true",
                   help="build with Apache Beam (DirectRunner unless --beam_options names a runner)")
    b.add_argument("--beam_options", default=None,
                   help='Beam pipeline flags, e.g. "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp"')
    b.set_defaults(func=build)

    m = sub.add_parser("melody", help="render SynthCaps lead lines in contrasting sounds (melody-embedder pairs)",
                       description="Example:\n  musiclm-jax data melody --config tiny_8s_n1000 --data_dir out/quickstart/tfds "
                                   "--split test --limit 4 --out_dir out/melody",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--config", required=True, help="a built SynthCaps config")
    m.add_argument("--data_dir", required=True)
    m.add_argument("--split", default="test")
    m.add_argument("--limit", type=int, default=4, help="at most this many clips (those without a lead line skip)")
    m.add_argument("--transpose", type=int, default=3, help="semitones of the transposed (negative) rendition")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out_dir", required=True, help="wavs <clip>_<timbre>.wav and renditions.jsonl go here")
    m.set_defaults(func=melody_renditions)


def build(args: argparse.Namespace) -> dict:
    """Handler for `data build`; returns a summary (splits, skipped) after printing it."""
    import logging
    import os

    import tensorflow_datasets as tfds

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {args.num_workers}")
    data_dir = os.path.expanduser(args.data_dir)
    dl_kwargs = {}
    if args.beam_options:
        from apache_beam.options.pipeline_options import PipelineOptions

        dl_kwargs["beam_options"] = PipelineOptions(args.beam_options.split())
    if args.dataset == "synthcaps":
        from musiclm_jax.data.synthcaps import builder as sc

        name = args.config or "tiny"
        if name not in sc.CORPUS_CONFIGS:
            raise ValueError(f"unknown synthcaps config {name!r}; choose one of {sorted(sc.CORPUS_CONFIGS)}")
        config = sc.make_config(name, sample_rate=args.sample_rate, clip_seconds=args.clip_seconds,
                                num_scores=args.num_scores, seed=args.seed)
        b = sc.Synthcaps(config=config, data_dir=data_dir, num_workers=args.num_workers,
                         use_beam=True if (args.beam or args.beam_options) else None)
    else:
        from musiclm_jax.data.audio_captions import builder as ac

        if args.manual_dir is None:
            raise ValueError("audio_captions needs your audio folder: pass --manual_dir DIR")
        b = ac.AudioCaptions(config=args.config or "16khz", data_dir=data_dir,
                             folder=os.path.expanduser(args.manual_dir), captions_file=args.captions_file)
        if args.beam or args.beam_options:
            raise ValueError("audio_captions builds locally; drop --beam/--beam_options")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(**dl_kwargs))
    summary = {"dataset": b.name, "config": b.builder_config.name, "dir": b.data_dir,
               "splits": {k: v.num_examples for k, v in b.info.splits.items()}}
    skipped = getattr(b, "report", {}).get("skipped") if args.dataset == "audio_captions" else (
        {"render_failed": len(b.skipped)} if b.skipped else {})
    summary["skipped"] = skipped or {}
    print(f"built {summary['dataset']}/{summary['config']} in {summary['dir']}: splits {summary['splits']}, "
          f"skipped {summary['skipped'] or 'none'}")
    return summary


def melody_renditions(args: argparse.Namespace) -> dict:
    """Handler for `data melody`: each clip's lead line in every timbre, plus one transposed copy."""
    import json
    import os

    import numpy as np

    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.data.synthcaps import melody
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips
    from musiclm_jax.data.synthcaps.sources import SourceError

    if args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    clips = synthcaps_clips(split=args.split, config=args.config, data_dir=os.path.expanduser(args.data_dir),
                            limit=max(8 * args.limit, 16), extra_keys=("lead_notes", "clip_id"))
    os.makedirs(args.out_dir, exist_ok=True)
    rows, skipped = [], []
    for clip in clips:
        if len(rows) >= args.limit:
            break
        name = str(clip.get("clip_id") or f"clip{len(rows) + len(skipped)}").replace("/", "_")
        notes = melody.notes_of(clip)
        if not notes:
            skipped.append(f"{name} (no lead line)")
            continue
        seconds = len(clip["audio"]) / clip["sample_rate"]
        rng = np.random.default_rng([args.seed, len(rows)])
        files = {}
        try:
            for timbre in melody.TIMBRES:
                files[timbre] = write_wav(os.path.join(args.out_dir, f"{name}_{timbre}.wav"),
                                          melody.render_melody(notes, timbre, 16000, seconds, rng), 16000)
            files["transposed"] = write_wav(
                os.path.join(args.out_dir, f"{name}_transposed{args.transpose:+d}.wav"),
                melody.render_melody(melody.transpose(notes, args.transpose), "sine", 16000, seconds, rng), 16000)
        except SourceError as e:
            skipped.append(f"{name} ({e})")
            continue
        rows.append({"clip_id": name, "caption": clip.get("caption", ""), "notes": len(notes), "files": files})
    with open(os.path.join(args.out_dir, "renditions.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"rendered {len(rows)} lead lines in {len(melody.TIMBRES)} timbres + a transposed copy into "
          f"{args.out_dir}; skipped {len(skipped)}{': ' + '; '.join(skipped) if skipped else ''}")
    return {"rendered": len(rows), "skipped": skipped}
