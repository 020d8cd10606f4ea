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
    "musiclm_jax.melody.commands",
    "musiclm_jax.cli.generate",
    "musiclm_jax.cli.infer",
    "musiclm_jax.cli.merge",
    "musiclm_jax.finetune.commands",
    "musiclm_jax.eval.commands",
    "musiclm_jax.quickstart",
    "musiclm_jax.tasks.commands",
)

# The shipped, trained MusicLM weights (made by `make quickstart`; MusicLM.from_pretrained layout), found relative to
# the package (a checkout or a wheel), not the working directory.
from musiclm_jax.resources import SHIPPED_MUSICLM as TRAINED_MODEL_DIR, shipped_musiclm_dir  # noqa: E402


def _demo(args: argparse.Namespace) -> None:
    """Renders captioned SynthCaps clips (the corpus everything trains on), then runs text-to-music: with trained
    weights when they exist, else with tiny untrained parts, saying so and what to run to train them."""
    import os

    from musiclm_jax.cli import generate as generate_commands
    from musiclm_jax.data.synthcaps.demo import run_demo

    run_demo(os.path.join(args.out_dir, "synthcaps"), num_clips=args.num_clips, seed=args.seed)
    shipped = shipped_musiclm_dir()
    model_dir = args.model_dir or (str(shipped) if shipped else None)
    gen = argparse.Namespace(
        prompt=[args.prompt], duration=args.duration, out=os.path.join(args.out_dir, "generated.wav"), out_dir=None,
        model_dir=model_dir, random_init=model_dir is None, tiny=model_dir is None, seed=args.seed,
        temperatures=None, top_k=None, top_p=None, coarse_guidance_scale=None, guidance_scale=args.guidance_scale,
        num_samples=1, no_progress=False, max_duration=args.duration, melody=None)
    print(f"text-to-music: {args.prompt!r} -> {gen.out}")
    summary = generate_commands.generate(gen)
    out = summary["outputs"][0]
    print(f"wrote {out['wav']} and {out['png']}; MuLan score (text-audio cosine) {out['mulan_score']:+.3f}"
          + (" -- untrained parts" if model_dir is None else f" -- weights from {model_dir}"))
    if model_dir is None:
        print(f"No trained MusicLM weights in {TRAINED_MODEL_DIR}, so the generated audio above is untrained noise; the "
              f"clips in {os.path.join(args.out_dir, 'synthcaps')} are real rendered music. `make quickstart` trains and "
              f"exports the weights there (resumable), then `make demo` uses them (or: musiclm-jax demo --model_dir DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musiclm-jax", description="MusicLM in JAX: data, training, generation.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="captioned SynthCaps clips, then text-to-music (wav + spectrogram PNG)")
    demo.add_argument("--out_dir", default="demo_out")
    demo.add_argument("--num_clips", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--prompt", default="a calm piano waltz with soft strings")
    demo.add_argument("--duration", type=float, default=2.0, help="seconds of generated audio")
    demo.add_argument("--guidance_scale", type=float, default=None,
                      help="classifier-free guidance (default: the model's own; the shipped weights' is 3, see the "
                           "model card)")
    demo.add_argument("--model_dir", default=None, help=f"trained MusicLM (default: {TRAINED_MODEL_DIR} if present)")
    demo.set_defaults(func=_demo)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from musiclm_jax.train.gin_utils import gin_shorthand

    parser = build_parser()
    shorthand, argv = gin_shorthand(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if shorthand:  # `--gin.KEY=VALUE`, as `python -m musiclm_jax.train` takes it, on any command with gin flags
        if not hasattr(args, "gin_bindings"):
            parser.error(f"{args.command} takes no gin bindings ({shorthand[0]!r})")
        args.gin_bindings = [*args.gin_bindings, *shorthand]
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError) as e:
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"musiclm-jax: error: {message}", file=sys.stderr)
        return 2
    if isinstance(result, dict) and result.get("preempted"):  # a training stopped by SIGTERM, checkpoint saved
        from musiclm_jax.train.launch import PREEMPTED_EXIT

        print("musiclm-jax: stopped by SIGTERM before the last step; run the same command again to resume",
              file=sys.stderr)
        return PREEMPTED_EXIT
    return 0
