"""The `musiclm-jax` command. Each area registers its own subcommands; heavy imports happen inside handlers.

Bad arguments and bad input end in one line, ``musiclm-jax: error: ...`` (exit 2); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules with a `register(subparsers)` function; each adds its subcommands with `set_defaults(func=...)`.
COMMAND_MODULES = (
    "musiclm_jax.data.commands",
    "musiclm_jax.codec.commands",
    "musiclm_jax.semantic.commands",
    "musiclm_jax.mulan.commands",
)


def _demo(args: argparse.Namespace) -> None:
    # Until text-to-music exists the demo shows the corpus everything trains on: rendered, captioned clips.
    from musiclm_jax.data.synthcaps.demo import run_demo

    run_demo(args.out_dir, num_clips=args.num_clips, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musiclm-jax", description="MusicLM in JAX: data, training, generation.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="render a few captioned SynthCaps clips (wav + spectrogram PNG)")
    demo.add_argument("--out_dir", default="demo_out")
    demo.add_argument("--num_clips", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError) as e:
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"musiclm-jax: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
