"""`musiclm-jax generate`: text in, a wav and its spectrogram PNG out. Heavy imports stay inside the handler.

    musiclm-jax generate --prompt "a calm piano waltz" --duration 10 --out song.wav --model_dir weights/musiclm
    musiclm-jax generate --prompt "a calm piano waltz" --duration 2 --out noise.wav --random_init --tiny
  musiclm-jax generate --prompt "a jazz trio" --melody hum.wav --duration 8 --out jazz.wav --model_dir DIR   # melody
"""
from __future__ import annotations

import argparse
import json
import os

from musiclm_jax.sampling import add_decoding_args, decoding_overrides
from musiclm_jax.musical_key import key_name

EXAMPLES = """Examples:
  musiclm-jax generate --prompt "a calm piano waltz" --duration 10 --out song.wav   # the shipped weights
  musiclm-jax generate --prompt "a calm piano waltz" --duration 10 --out song.wav --model_dir weights/musiclm
  musiclm-jax generate --prompt "upbeat jazz" --prompt "sad violin" --duration 5 --out_dir out/ --model_dir weights/musiclm
  musiclm-jax generate --prompt "a calm piano waltz" --duration 2 --out noise.wav --random_init --tiny

--model_dir holds musiclm.json and the sub-directories mulan/ codec/ stage_semantic/ stage_coarse/ stage_fine/
(semantic/ too for continuation); see MusicLM.from_pretrained. Without --model_dir the shipped weights are used.
Sampling options left unset take the model's recommended settings (musiclm.json "sampling"). --random_init --tiny needs no weights: its audio is
untrained noise that only shows the pipeline runs end to end.
"""
UNTRAINED = ("NOTE: --random_init builds tiny, randomly initialised parts: this audio is untrained noise, not music. "
             "Train the parts (codec, w2v-BERT, MuLan, the three stage LMs: gin/experiments/) and pass --model_dir.")


def register(subparsers) -> None:
    g = subparsers.add_parser("generate", help="text-to-music: prompt(s) -> wav + spectrogram PNG",
                              description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--prompt", action="append", required=True, help="caption (repeatable: one clip per prompt)")
    g.add_argument("--duration", type=float, default=10.0, help="seconds of audio per prompt")
    add_max_duration_arg(g)
    g.add_argument("--out", default="song.wav", help="output wav (one prompt); the PNG goes beside it")
    g.add_argument("--out_dir", default=None, help="with several prompts: one wav + PNG each, named by index")
    add_model_args(g)
    add_sampling_args(g)
    g.add_argument("--melody", default=None,
                   help="a hummed/whistled/played melody (audio file) to follow, for every prompt (a "
                        "melody-conditioned model: musiclm.json melody_levels > 0, melody/ embedder)")
    g.add_argument("--bpm", type=float, default=None,
                   help="tempo for every prompt (a tempo-conditioned model: musiclm.json beat_phases > 0); default: "
                        "the tempo each prompt states (e.g. '... at 120 BPM'), else the model's choice")
    g.add_argument("--key", default=None,
                   help="key for every prompt, e.g. 'F# minor' (a key-conditioned model: musiclm.json key_stages); "
                        "default: the key each prompt states (e.g. '... in Eb major'), else the model's choice")
    g.add_argument("--no_progress", action="store_true", help="hide the per-stage progress bars")
    g.set_defaults(func=generate)


def add_max_duration_arg(g) -> None:
    from musiclm_jax.sampling import MAX_DURATION_S

    g.add_argument("--max_duration", type=float, default=MAX_DURATION_S,
                   help="refuse durations above this many seconds (a typo such as 1e9 would decode for days)")


def add_model_args(g) -> None:
    """--model_dir / --random_init / --tiny: which MusicLM to load (see `load_model`). Shared with `infer`."""
    g.add_argument("--model_dir", default=None,
                   help="directory of a trained MusicLM (default: the shipped weights, weights/musiclm)")
    g.add_argument("--random_init", action="store_true", help="no weights: random parts (needs --tiny)")
    g.add_argument("--tiny", action="store_true", help="tiny parts (with --random_init)")


def add_sampling_args(g, seed_help: str | None = None) -> None:
    """--seed and the decoding options of `MusicLM.generate_full`. Shared with `infer`."""
    model_default = "default: the model's own (musiclm.json 'sampling'), else %s"
    g.add_argument("--seed", type=int, default=0, help=seed_help)
    add_decoding_args(g, model_default)
    g.add_argument("--guidance_scale", type=float, default=None,
                   help="classifier-free guidance (> 1: closer to text); " + model_default % "1.0")
    g.add_argument("--num_samples", type=int, default=1, help="> 1: keep the best by MuLan text-audio score")


def sampling_kwargs(args: argparse.Namespace, model=None) -> dict:
    """The `generate_full` keyword arguments set by `add_sampling_args` (all but the seed); options left unset take
    `model.sampling` (the model's recommended settings) when a model is given, else are left out."""
    out = decoding_overrides(args)
    if args.guidance_scale is not None:
        out["guidance_scale"] = args.guidance_scale
    if model is not None:
        out = {**model.sampling, **out}
    return {**out, "num_samples": args.num_samples}


def check_text(value: str, flag: str) -> str:
    """A command-line caption: non-empty UTF-8 text (Python hands undecodable argv bytes over as surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{flag} {value.encode('utf-8', 'surrogateescape')!r} is not UTF-8 text: pass the "
                         "caption in UTF-8 (check the terminal's locale or the file it came from)") from None
    if not value.strip():
        raise ValueError(f"{flag} is empty: pass a caption, e.g. {flag} \"a calm piano waltz\"")
    return value


def check_sampling(args: argparse.Namespace) -> None:
    decoding_overrides(args)
    if args.num_samples < 1:
        raise ValueError(f"need --num_samples >= 1, got {args.num_samples}")


def load_model(args: argparse.Namespace):
    from musiclm_jax import pipeline

    if args.random_init:
        if not args.tiny:
            raise ValueError("--random_init builds only the tiny parts: add --tiny")
        return pipeline.tiny_random(args.seed, **({"melody": True} if getattr(args, "melody", None) else {}))
    if not args.model_dir:
        from musiclm_jax.resources import SHIPPED_MUSICLM, shipped_musiclm_dir

        if shipped_musiclm_dir() is None:
            raise ValueError(f"no --model_dir given and no shipped weights in {SHIPPED_MUSICLM}: pass --model_dir "
                             "DIR with a trained MusicLM, or --random_init --tiny to try the pipeline with untrained "
                             "tiny parts")
        args.model_dir = str(shipped_musiclm_dir())
        print(f"loading the shipped weights: {args.model_dir}")
    return pipeline.MusicLM.from_pretrained(args.model_dir)


def output_paths(args: argparse.Namespace) -> list[str]:
    """The wav path of every prompt, checked before any model is loaded (so a bad name never loses the audio)."""
    if len(args.prompt) > 1 and not args.out_dir:
        raise ValueError("several --prompt values need --out_dir (one wav per prompt)")
    if args.out_dir:
        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise ValueError(f"--out_dir {args.out_dir} is a file: pass a directory (it is created if missing)")
        paths = [os.path.join(args.out_dir, f"{i:03d}.wav") for i in range(len(args.prompt))]
    else:
        if os.path.isdir(args.out) or args.out.endswith(os.sep):
            raise ValueError(f"--out {args.out} is a directory: pass a file name ending in .wav (e.g. "
                             f"{os.path.join(args.out, 'song.wav')}), or use --out_dir DIR")
        if not args.out.lower().endswith(".wav"):
            raise ValueError(f"--out {args.out} does not end in .wav: name the output file e.g. song.wav")
        paths = [args.out]
    for path in paths:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if not os.access(parent, os.W_OK):
            raise ValueError(f"cannot write into {parent}: choose another --out / --out_dir")
    return paths


def generate(args: argparse.Namespace) -> dict:
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.audio.plot import save_spectrogram_png

    from musiclm_jax.sampling import check_duration

    # Everything about the request is checked before the model loads (20 s or more).
    prompts = [check_text(p, "--prompt") for p in args.prompt]
    check_duration(args.duration, args.max_duration, "--duration")
    check_sampling(args)
    paths = output_paths(args)
    tempo = {}
    if getattr(args, "bpm", None) is not None:
        from musiclm_jax.tempo import check_bpm

        tempo = {"bpm": check_bpm(args.bpm, len(prompts), "--bpm")}
    if getattr(args, "key", None) is not None:
        from musiclm_jax.musical_key import check_key

        tempo["key"] = check_key(args.key, len(prompts), "--key")
    melody = {}
    if args.melody:
        from musiclm_jax.audio.io import load_audio

        wave, sr = load_audio(args.melody)   # one-line errors: missing, empty, unreadable, truncated
        melody = {"melody": wave, "melody_sample_rate": sr}
    if args.random_init:
        print(UNTRAINED)
    lm = load_model(args)
    if args.melody and lm.melody is None:
        raise ValueError(f"--melody needs a melody-conditioned model; {args.model_dir or 'this model'} has none "
                         "(musiclm.json melody_levels = 0): drop --melody or pass such a --model_dir")
    if "key" in tempo and not lm.has_key:
        raise ValueError(f"--key needs a key-conditioned model; {args.model_dir or 'this model'} has none "
                         "(musiclm.json key_stages is empty): drop --key or pass such a --model_dir")
    if "bpm" in tempo and not lm.has_tempo:
        raise ValueError(f"--bpm needs a tempo-conditioned model; {args.model_dir or 'this model'} has none "
                         "(musiclm.json beat_phases = 0): drop --bpm or pass such a --model_dir")
    result = lm.generate_full(prompts, args.duration, **sampling_kwargs(args), seed=args.seed,
                              progress=not args.no_progress, max_duration_s=args.max_duration, **melody, **tempo)
    # The kept sample's MuLan text-audio cosine (reranking already scored it when num_samples > 1).
    best = result.scores[:, 0] if args.num_samples > 1 else lm.mulan_scores(prompts, result.waves)
    outputs = []
    for i, (prompt, wave) in enumerate(zip(prompts, result.waves)):
        wav = write_wav(paths[i], wave, result.sample_rate)
        png = save_spectrogram_png(os.path.splitext(wav)[0] + ".png", [wave], result.sample_rate,
                                   [prompt[:60] + (" (untrained)" if args.random_init else "")])
        outputs.append({"prompt": prompt, "wav": wav, "png": png, "seconds": wave.shape[-1] / result.sample_rate,
                        "mulan_score": float(best[i]),
                        "mulan_scores": [None if s != s else float(s) for s in result.scores[i]]})
    summary = {"outputs": outputs, "sample_rate": result.sample_rate, "seed": args.seed, "untrained": args.random_init,
               "model_dir": None if args.random_init else args.model_dir, "sampling": sampling_kwargs(args, lm),
               "melody": args.melody, "bpm": result.bpm,
               "key": None if result.key is None else [None if k is None else key_name(k) for k in result.key],
               "timings_s": {k: round(v, 3) for k, v in result.timings.items()}}
    print(json.dumps(summary))
    return summary
