"""`musiclm-jax infer`: batch text-to-music over a JSONL file of prompts; resumable, sharded over hosts. The job
itself (input format, chunks and markers, seeds, sharding) is library code: musiclm_jax/batch_decode.py.
"""
from __future__ import annotations

import argparse
import os

from musiclm_jax.batch_decode import check_job, resolve_shard, run_infer
from musiclm_jax.cli import generate as generate_commands

EXAMPLES = """Examples:
  musiclm-jax infer --prompts prompts.jsonl --out_dir out/ --model_dir weights/musiclm --duration 10
  musiclm-jax infer --prompts prompts.jsonl --out_dir out/ --random_init --tiny --duration 0.5

prompts.jsonl, one per line:  {"prompt": "a calm piano waltz", "id": "waltz", "seed": 7, "duration_s": 5}
                              "upbeat jazz"          (bare string: id line-000002, seed from --seed and the line)
A melody-conditioned model also reads "melody": "hum.wav" (relative to the working directory or the prompts file).
Output in --out_dir: <id>.wav, <id>.{semantic,coarse,fine}.npy, chunks/chunk-NNNNN.{jsonl,done}, summary.json,
results.jsonl (once every chunk is done). Rerun the same command after a crash: finished chunks are skipped.
Exit status: 0 when no prompt failed (malformed lines are reported and skipped), 1 when one did.
"""


def register(subparsers) -> None:
    g = subparsers.add_parser("infer", help="batch text-to-music over a JSONL of prompts (resumable, sharded)",
                              description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--prompts", required=True, help="JSONL file: one prompt object (or bare string) per line")
    g.add_argument("--out_dir", required=True, help="wavs, tokens, chunk markers and summary go here")
    generate_commands.add_model_args(g)
    g.add_argument("--duration", type=float, default=10.0, help="seconds per prompt (a line's duration_s wins)")
    generate_commands.add_max_duration_arg(g)
    g.add_argument("--batch_size", type=int, default=1,
                   help="prompts of one duration per pipeline call (faster; each keeps its own seed and audio)")
    g.add_argument("--chunk_size", type=int, default=64, help="lines per chunk (the unit of resume and sharding)")
    g.add_argument("--num_shards", type=int, default=None, help="override jax.process_count()")
    g.add_argument("--shard_index", type=int, default=None, help="override jax.process_index()")
    generate_commands.add_sampling_args(
        g, seed_help="base seed: a line without 'seed' gets one derived from it and its line number (also the "
                     "seed of the --random_init parts)")
    g.add_argument("--progress", action="store_true", help="show the per-stage progress bars")
    g.set_defaults(func=infer)


def _model_desc(args: argparse.Namespace) -> str:
    """How job.json names the model (the shipped weights when no --model_dir is given)."""
    if args.random_init:
        return f"random_init tiny seed={args.seed}"
    if args.model_dir:
        return os.path.abspath(args.model_dir)
    from musiclm_jax.resources import SHIPPED_MUSICLM
    return str(SHIPPED_MUSICLM)


def infer(args: argparse.Namespace) -> dict:
    if not os.path.exists(args.prompts):  # before loading the model: a typo should fail in a second
        raise FileNotFoundError(f"prompts file not found: {args.prompts} (JSONL: one {{\"prompt\": ...}} per line)")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise ValueError(f"--out_dir {args.out_dir} is a file: pass a directory (it is created if missing)")
    # Settings, prompts and a resumed job's record are checked before the model loads. The sampling options the
    # user left unset are the model's own; they are compared once the model is known (in run_infer).
    generate_commands.check_sampling(args)
    desc = _model_desc(args)
    check_job(args.prompts, args.out_dir, duration_s=args.duration, batch_size=args.batch_size,
              chunk_size=args.chunk_size, seed=args.seed, num_samples=args.num_samples, model_desc=desc,
              max_duration_s=args.max_duration, not_compared=("sampling",))
    if args.num_shards is not None or args.shard_index is not None:
        resolve_shard(args.num_shards, args.shard_index)
    else:
        from musiclm_jax.train import partitioning
        partitioning.maybe_initialize_distributed()
    if args.random_init:
        print(generate_commands.UNTRAINED)
    lm = generate_commands.load_model(args)
    summary = run_infer(lm, args.prompts, args.out_dir, duration_s=args.duration, batch_size=args.batch_size,
                        chunk_size=args.chunk_size, seed=args.seed, **generate_commands.sampling_kwargs(args),
                        num_shards=args.num_shards, shard_index=args.shard_index, model_desc=desc,
                        untrained=args.random_init, progress=args.progress, max_duration_s=args.max_duration)
    if summary["failed"]:
        raise SystemExit(1)
    return summary
