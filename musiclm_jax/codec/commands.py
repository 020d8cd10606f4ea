"""`musiclm-jax codec {train,encode,decode,reconstruct,eval}`: train SoundStream, tokenize audio, round-trip it.

Imports stay light here; jax and the model load inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import os

from musiclm_jax.train import gin_utils

EXAMPLES = """Examples:
  musiclm-jax codec train --gin_file=gin/experiments/codec_tiny.gin --model_dir=/tmp/codec_tiny
  musiclm-jax codec reconstruct --model_dir=/tmp/codec_tiny --input song.wav --out_dir /tmp/recon --num_levels 2
  musiclm-jax codec encode --model_dir=/tmp/codec_tiny --input song.wav --output song_codes.npy
  musiclm-jax codec decode --model_dir=/tmp/codec_tiny --input song_codes.npy --output song_decoded.wav
  musiclm-jax codec eval --model_dir=/tmp/codec_tiny --audio_dir my_music/ --opus
"""


def register(subparsers) -> None:
    codec = subparsers.add_parser("codec", help="SoundStream neural codec: train, encode, decode, reconstruct, eval",
                                  description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = codec.add_subparsers(dest="codec_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="train with the shared trainer (generator + discriminators)")
    gin_utils.add_gin_arguments(t, "gin file (repeatable); default gin/experiments/codec_tiny.gin")
    t.add_argument("--model_dir", default=None, help="where checkpoints go (binds MODEL_DIR)")
    t.add_argument("--steps", type=int, default=None, help="number of train steps (binds TRAIN_STEPS)")
    t.add_argument("--audio_dir", default=None, help="train on crops of the audio files in this folder")
    t.add_argument("--synthcaps", default=None, help="train on a built SynthCaps corpus (tiny, small, ...)")
    t.add_argument("--data_dir", default=None, help="TFDS data directory holding the built SynthCaps")
    t.set_defaults(func=train)

    e = sub.add_parser("encode", help="audio file -> codes .npy [frames, levels] (int16)")
    e.add_argument("--model_dir", required=True)
    e.add_argument("--input", required=True, help="audio file (any rate, mono or stereo)")
    e.add_argument("--output", required=True, help=".npy file for the codes")
    e.add_argument("--num_levels", type=int, default=None, help="RVQ levels to keep (bitrate); default all")
    e.set_defaults(func=encode)

    d = sub.add_parser("decode", help="codes .npy [frames, levels] -> wav at the codec's sample rate")
    d.add_argument("--model_dir", required=True)
    d.add_argument("--input", required=True)
    d.add_argument("--output", required=True)
    d.set_defaults(func=decode)

    r = sub.add_parser("reconstruct", help="encode + decode a file: round-trip wav and a side-by-side spectrogram")
    r.add_argument("--model_dir", required=True)
    r.add_argument("--input", required=True)
    r.add_argument("--out_dir", required=True)
    r.add_argument("--num_levels", type=int, default=None)
    r.set_defaults(func=reconstruct)

    v = sub.add_parser("eval", help="quality at 1..Q levels (mel distance, SI-SNR, LSD, codebook perplexity)")
    v.add_argument("--model_dir", required=True)
    v.add_argument("--audio_dir", default=None, help="folder of audio files to evaluate on")
    v.add_argument("--synthcaps", default=None, help="a built SynthCaps config (test split) to evaluate on")
    v.add_argument("--data_dir", default=None)
    v.add_argument("--seconds", type=float, default=4.0, help="evaluate the first N seconds of each file")
    v.add_argument("--limit", type=int, default=32, help="at most this many files")
    v.add_argument("--opus", action="store_true", help="also run Opus (opusenc/opusdec) at matching bitrates")
    v.add_argument("--opus_kbps", default="", help="extra Opus bitrates for reference, e.g. 12,24 (with --opus)")
    v.add_argument("--no_music", action="store_true",
                   help="skip the musical columns (tempo / key accuracy vs the clips' truth, frame-rate comb)")
    v.add_argument("--out", default=None, help="JSON results (default out/eval/<model folder name>/codec_eval.json)")
    v.set_defaults(func=evaluate)


def train(args: argparse.Namespace) -> dict:
    from musiclm_jax.train.launch import done_line, launch, model_dir_of_config

    bindings = list(args.gin_bindings)
    if args.audio_dir and args.synthcaps:
        raise ValueError("pass either --audio_dir or --synthcaps, not both")
    if args.audio_dir:
        bindings += ["train.dataset = @audio_folder", "train.eval_dataset = @audio_folder",
                     f"audio_folder.folder = {os.path.expanduser(args.audio_dir)!r}"]
    if args.synthcaps:
        bindings += ["train.dataset = @synthcaps_audio", "train.eval_dataset = @synthcaps_audio",
                     f"synthcaps_audio.config = {args.synthcaps!r}"]
        if args.data_dir:
            bindings.append(f"synthcaps_audio.data_dir = {os.path.expanduser(args.data_dir)!r}")
    written = {}

    def train_and_name_dir() -> dict:
        from musiclm_jax.train.trainer import train as run_train

        written["model_dir"] = model_dir_of_config()
        return run_train()   # the checkpoint records the codec's config: the API rebuilds the codec from it

    summary = launch(train_and_name_dir, args.gin_file or ["experiments/codec_tiny.gin"], bindings,
                     args.gin_search_path, registrations=("musiclm_jax.codec.data",), model_dir=args.model_dir,
                     steps=int(args.steps) if args.steps else None)
    print(done_line(summary, "mel_loss", model_dir=written.get("model_dir")))
    return {k: v for k, v in summary.items() if k != "state"}


def _check_file(path: str, flag: str = "--input") -> None:
    """A one-line error for a folder (or a missing file) passed where one audio file is expected."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory (use --audio_dir {path} with `codec eval` or `codec train`; "
                         f"{flag} takes one audio file)")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file ({flag} takes one audio file)")


def _codec(model_dir: str):
    from musiclm_jax.codec.api import SoundStream

    return SoundStream.from_checkpoint(os.path.expanduser(model_dir))


def encode(args: argparse.Namespace):
    import numpy as np

    from musiclm_jax.audio.io import load_audio

    _check_file(args.input)
    codec = _codec(args.model_dir)
    wave, sr = load_audio(args.input)
    codes = codec.encode(wave, sr, args.num_levels)[0]
    np.save(args.output, codes.astype(np.int16))
    print(f"{args.input}: {wave.shape[-1] / sr:.2f} s -> codes {codes.shape} "
          f"({codec.bitrate(codes.shape[-1]) / 1000:g} kbps) in {args.output}")
    return codes


def decode(args: argparse.Namespace):
    import numpy as np

    from musiclm_jax.audio.io import write_wav

    codec = _codec(args.model_dir)
    try:
        codes = np.load(args.input)
    except (OSError, ValueError) as e:
        raise ValueError(f"{args.input}: not a .npy codes file ({e})") from e
    wave = codec.decode(codes)[0]
    write_wav(args.output, wave, codec.sample_rate)
    print(f"{args.input}: codes {codes.shape} -> {wave.shape[-1] / codec.sample_rate:.2f} s in {args.output}")
    return wave


def reconstruct(args: argparse.Namespace) -> dict:
    import numpy as np

    from musiclm_jax.audio.io import load_audio, write_wav
    from musiclm_jax.audio.plot import save_spectrogram_png
    from musiclm_jax.codec import losses

    _check_file(args.input)
    codec = _codec(args.model_dir)
    wave, _ = load_audio(args.input, codec.sample_rate)
    recon = codec.reconstruct(wave, codec.sample_rate, args.num_levels)[0]
    n = args.num_levels or codec.num_levels
    stem = os.path.splitext(os.path.basename(args.input))[0]
    os.makedirs(args.out_dir, exist_ok=True)
    wav_path = write_wav(os.path.join(args.out_dir, f"{stem}_codec_q{n}.wav"), recon, codec.sample_rate)
    png_path = save_spectrogram_png(os.path.join(args.out_dir, f"{stem}_codec_q{n}.png"), [wave, recon],
                                    codec.sample_rate, ["original", f"SoundStream, {n} levels "
                                                        f"({codec.bitrate(n) / 1000:g} kbps)"])
    x, y = np.asarray(wave)[None], np.asarray(recon)[None]
    result = {"wav": wav_path, "png": png_path, "kbps": codec.bitrate(n) / 1000,
              "mel_distance": float(losses.mel_distance(x, y, codec.sample_rate)[0]),
              "si_snr_db": float(losses.si_snr(x, y)[0])}
    print(json.dumps(result))
    return result


def evaluate(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import codec as ev

    try:
        extra_kbps = [float(k) for k in args.opus_kbps.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--opus_kbps takes comma-separated numbers, e.g. 12,24; got {args.opus_kbps!r}") from None
    codec = _codec(args.model_dir)
    waves, names, info = ev.eval_clips(codec.sample_rate, audio_dir=args.audio_dir, synthcaps=args.synthcaps,
                                       data_dir=args.data_dir, seconds=args.seconds, limit=args.limit,
                                       with_info=True)
    if info["skipped"]:
        print(f"skipped {len(info['skipped'])} file(s): " + "; ".join(info["skipped"]))
    truths, real_comb = None, None
    results = {"clips": len(waves), "seconds": args.seconds, "skipped": info["skipped"],
               "codec": codec.describe(), "codec_name": codec.short_name()}
    if not args.no_music:
        truths = info["truths"]
        results["real"] = ev.musical_scores(waves, codec.sample_rate, truths, codec.frame_rate)
        real_comb = results["real"]["comb"]
        results["real"]["comb_ratio"] = 1.0
    results["soundstream"] = ev.bitrate_curve(codec, waves, truths=truths, real_comb=real_comb)
    results["autoencoder"] = ev.autoencoder_row(codec, waves, truths=truths, real_comb=real_comb)
    if args.opus:
        kbps = [r["kbps"] for r in results["soundstream"]] + extra_kbps
        results["opus"] = ev.opus_curve(waves, codec.sample_rate, kbps, truths=truths, frame_rate=codec.frame_rate,
                                        real_comb=real_comb)
    from musiclm_jax.eval import default_output

    out = args.out or default_output(args.model_dir, "codec_eval.json")  # never into the model dir (e.g. weights/)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(ev.markdown_table(results))
    print(f"wrote {out}")
    return results
