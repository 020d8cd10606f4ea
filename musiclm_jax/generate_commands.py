"""`musiclm-jax generate`: text in, a wav and its spectrogram PNG out. Heavy imports stay inside the handler.

    musiclm-jax generate --prompt "a calm piano waltz" --duration 10 --out song.wav --model_dir weights/musiclm
    musiclm-jax generate --prompt "a calm piano waltz" --duration 2 --out noise.wav --random_init --tiny
"""
from __future__ import annotations

import argparse
import json
import os

EXAMPLES = """Examples:
  musiclm-jax generate --prompt "a calm piano waltz" --duration 10 --out song.wav --model_dir weights/musiclm
  musiclm-jax generate --prompt "upbeat jazz" --prompt "sad violin" --duration 5 --out_dir out/ --model_dir weights/musiclm
  musiclm-jax generate --prompt "a calm piano waltz" --duration 2 --out noise.wav --random_init --tiny

--model_dir holds musiclm.json and the sub-directories mulan/ codec/ stage_semantic/ stage_coarse/ stage_fine/
(semantic/ too for continuation); see MusicLM.from_pretrained. --random_init --tiny needs no weights: its audio is
untrained noise that only shows the pipeline runs end to end.
"""
UNTRAINED = ("NOTE: --random_init builds tiny, randomly initialised parts: this audio is untrained noise, not music. "
             "Train the parts (codec, w2v-BERT, MuLan, the three stage LMs: gin/experiments/) and pass --model_dir.")


def register(subparsers) -> None:
    g = subparsers.add_parser("generate", help="text-to-music: prompt(s) -> wav + spectrogram PNG",
                              description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--prompt", action="append", required=True, help="caption (repeatable: one clip per prompt)")
    g.add_argument("--duration", type=float, default=10.0, help="seconds of audio per prompt")
    g.add_argument("--out", default="song.wav", help="output wav (one prompt); the PNG goes beside it")
    g.add_argument("--out_dir", default=None, help="with several prompts: one wav + PNG each, named by index")
    add_model_args(g)
    add_sampling_args(g)
    g.add_argument("--no_progress", action="store_true", help="hide the per-stage progress bars")
    g.set_defaults(func=generate)


def add_model_args(g) -> None:
    """--model_dir / --random_init / --tiny: which MusicLM to load (see `load_model`). Shared with `infer`."""
    g.add_argument("--model_dir", default=None, help="directory of a trained MusicLM (see above)")
    g.add_argument("--random_init", action="store_true", help="no weights: random parts (needs --tiny)")
    g.add_argument("--tiny", action="store_true", help="tiny parts (with --random_init)")


def add_sampling_args(g, seed_help: str | None = None) -> None:
    """--seed and the decoding options of `MusicLM.generate_full`. Shared with `infer`."""
    g.add_argument("--seed", type=int, default=0, help=seed_help)
    g.add_argument("--temperatures", type=float, nargs=3, default=(1.0, 0.95, 0.4),
                   metavar=("SEMANTIC", "COARSE", "FINE"))
    g.add_argument("--top_k", type=int, default=0)
    g.add_argument("--top_p", type=float, default=1.0)
    g.add_argument("--guidance_scale", type=float, default=1.0, help="classifier-free guidance (> 1: closer to text)")
    g.add_argument("--num_samples", type=int, default=1, help="> 1: keep the best by MuLan text-audio score")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The `generate_full` keyword arguments set by `add_sampling_args` (all but the seed)."""
    return dict(temperatures=tuple(args.temperatures), top_k=args.top_k, top_p=args.top_p,
                guidance_scale=args.guidance_scale, num_samples=args.num_samples)


def load_model(args: argparse.Namespace):
    from musiclm_jax import pipeline

    if args.random_init:
        if not args.tiny:
            raise ValueError("--random_init builds only the tiny parts: add --tiny")
        return pipeline.tiny_random(args.seed)
    if not args.model_dir:
        raise ValueError("pass --model_dir DIR with a trained MusicLM, or --random_init --tiny to try the pipeline "
                         "with untrained tiny parts")
    return pipeline.MusicLM.from_pretrained(args.model_dir)


def generate(args: argparse.Namespace) -> dict:
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.audio.plot import save_spectrogram_png

    if args.duration <= 0:
        raise ValueError(f"--duration must be > 0 seconds, got {args.duration}")
    if len(args.prompt) > 1 and not args.out_dir:
        raise ValueError("several --prompt values need --out_dir (one wav per prompt)")
    if args.random_init:
        print(UNTRAINED)
    lm = load_model(args)
    result = lm.generate_full(args.prompt, args.duration, **sampling_kwargs(args), seed=args.seed,
                              progress=not args.no_progress)
    # The kept sample's MuLan text-audio cosine (reranking already scored it when num_samples > 1).
    best = result.scores[:, 0] if args.num_samples > 1 else lm.mulan_scores(args.prompt, result.waves)
    outputs = []
    for i, (prompt, wave) in enumerate(zip(args.prompt, result.waves)):
        path = os.path.join(args.out_dir, f"{i:03d}.wav") if args.out_dir else args.out
        wav = write_wav(path, wave, result.sample_rate)
        png = save_spectrogram_png(os.path.splitext(wav)[0] + ".png", [wave], result.sample_rate,
                                   [prompt[:60] + (" (untrained)" if args.random_init else "")])
        outputs.append({"prompt": prompt, "wav": wav, "png": png, "seconds": wave.shape[-1] / result.sample_rate,
                        "mulan_score": float(best[i]),
                        "mulan_scores": [None if s != s else float(s) for s in result.scores[i]]})
    summary = {"outputs": outputs, "sample_rate": result.sample_rate, "seed": args.seed, "untrained": args.random_init,
               "timings_s": {k: round(v, 3) for k, v in result.timings.items()}}
    print(json.dumps(summary))
    return summary
