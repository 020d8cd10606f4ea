"""`musiclm-jax mulan {train,fit-quantizer,eval,embed}`: train MuLan (+ its quantizer), refit the quantizer,
evaluate retrieval, embed text or audio.

Imports stay light here; jax, tensorflow-datasets and the model load inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import os

from musiclm_jax.train import gin_utils
from musiclm_jax.train.steps import add_steps_argument

EXAMPLES = """Examples:
  musiclm-jax data build --dataset synthcaps --config tiny --data_dir ~/tfds
  musiclm-jax mulan train --gin_file=gin/experiments/mulan_tiny_synthcaps.gin --model_dir=/tmp/mulan_tiny \\
      --data_dir ~/tfds --gin_bindings="SYNTHCAPS='tiny'" --steps 300
  musiclm-jax mulan fit-quantizer --model_dir=/tmp/mulan_tiny --data_dir ~/tfds --synthcaps tiny --fit_on audio+text
  musiclm-jax mulan eval --model_dir=/tmp/mulan_tiny --data_dir ~/tfds --synthcaps tiny --split test
  musiclm-jax mulan embed --model_dir=/tmp/mulan_tiny --text "a calm piano piece" --tokens
  musiclm-jax mulan embed --model_dir=/tmp/mulan_tiny --audio_dir demo_out/synthcaps --out /tmp/embeddings.json
"""


def register(subparsers) -> None:
    mulan = subparsers.add_parser("mulan", help="MuLan: joint text/audio embedding and conditioning tokens",
                                  description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = mulan.add_subparsers(dest="mulan_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="contrastive training with the shared trainer, then the quantizer fit")
    gin_utils.add_gin_arguments(t, "gin file (repeatable), e.g. gin/experiments/mulan_tiny_synthcaps.gin")
    t.add_argument("--model_dir", default=None, help="where checkpoints go (binds MODEL_DIR)")
    t.add_argument("--data_dir", default=None, help="TFDS data directory holding the built synthcaps")
    add_steps_argument(t)
    t.set_defaults(func=train)

    q = sub.add_parser("fit-quantizer", help="(re)fit the conditioning RVQ of a trained MuLan on train clips")
    q.add_argument("--model_dir", required=True)
    q.add_argument("--synthcaps", default="tiny", help="synthcaps config name (tiny, small, ...)")
    q.add_argument("--data_dir", default=None)
    q.add_argument("--fit_on", default="audio", choices=("audio", "audio+text"),
                   help="embeddings the codebooks are fitted on (default audio, as `train` does)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=fit_quantizer)

    e = sub.add_parser("eval", help="retrieval recall@1/5/10, zero-shot accuracy and swap tests on SynthCaps, "
                       "with baselines")
    e.add_argument("--model_dir", required=True)
    e.add_argument("--synthcaps", default="tiny", help="synthcaps config name (tiny, small, ...)")
    e.add_argument("--data_dir", default=None)
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None, help="evaluate at most this many clips")
    e.add_argument("--no_baselines", action="store_true", help="skip the random and MiniLM-probe baselines")
    e.add_argument("--out", default=None, help="JSON results file (default: out/eval/<model folder name>/"
                   "eval_<split>.json)")
    e.set_defaults(func=evaluate)

    m = sub.add_parser("embed", help="embeddings (and tokens) of captions or audio files")
    m.add_argument("--model_dir", required=True)
    m.add_argument("--text", action="append", default=[], help="a caption (repeatable)")
    m.add_argument("--audio", action="append", default=[], help="an audio file (repeatable)")
    m.add_argument("--audio_dir", default=None, help="every audio file of a folder")
    m.add_argument("--tokens", action="store_true", help="also print the conditioning tokens")
    m.add_argument("--out", default=None, help="write embeddings (and tokens) to this .json file")
    m.set_defaults(func=embed)


def train(args: argparse.Namespace) -> dict:
    from musiclm_jax.train.launch import done_line, launch

    bindings = list(args.gin_bindings)
    if args.data_dir:
        bindings.append(f"synthcaps_clips.data_dir = {os.path.expanduser(args.data_dir)!r}")
    if not args.gin_file:
        raise ValueError("no --gin_file given: pass e.g. --gin_file=gin/experiments/mulan_tiny_synthcaps.gin")
    summary = launch("musiclm_jax.mulan.run:train_mulan", args.gin_file, bindings, args.gin_search_path,
                     registrations=("musiclm_jax.mulan.data",), model_dir=args.model_dir, steps=args.steps)
    print(done_line(summary))
    if "quantizer" in summary:
        q = summary["quantizer"]
        print(f"quantizer: cosine lost {q['audio']['cosine_lost']:.4f} (audio), {q['text']['cosine_lost']:.4f} (text)")
    return summary


def fit_quantizer(args: argparse.Namespace) -> dict:
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips
    from musiclm_jax.mulan.run import fit_and_save_quantizer

    if not os.path.isdir(args.model_dir):
        raise ValueError(f"--model_dir {args.model_dir} does not exist: pass a trained MuLan's directory")
    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    clips = synthcaps_clips(split="train", config=args.synthcaps, data_dir=data_dir)
    report = fit_and_save_quantizer(args.model_dir, clips, seed=args.seed, fit_on=args.fit_on)
    print(f"quantizer fitted on {args.fit_on} of {len(clips)} train clips: cosine lost "
          f"{report['audio']['cosine_lost']:.4f} (audio), {report['text']['cosine_lost']:.4f} (text)")
    return report


def evaluate(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import default_output
    from musiclm_jax.mulan import evaluate as ev
    from musiclm_jax.mulan.api import MuLan
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips

    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    clips = synthcaps_clips(split=args.split, config=args.synthcaps, data_dir=data_dir, limit=args.limit)
    if not clips:
        raise ValueError(f"synthcaps/{args.synthcaps} split {args.split!r} is empty")
    mulan = MuLan.from_checkpoint(args.model_dir)
    results = {"mulan": ev.evaluate_mulan(mulan, clips)}
    separation = ev.text_separation(mulan.embed_text, mulan.tokens_from_text if getattr(mulan, "quantizer", None) is not None else None)
    if not args.no_baselines:
        train_clips = synthcaps_clips(split="train", config=args.synthcaps, data_dir=data_dir, limit=args.limit)
        results["random"] = ev.random_baseline(clips, mulan.cfg.embed_dim)
        results["minilm_probe"] = ev.minilm_probe_baseline(train_clips, clips)
    report_path = os.path.join(args.model_dir, "quantizer_report.json")
    if os.path.exists(report_path):
        with open(report_path) as f:
            results["quantizer"] = json.load(f)
    results["text_separation"] = separation
    out = args.out or default_output(args.model_dir, f"eval_{args.split}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"synthcaps/{args.synthcaps} {args.split}: {len(clips)} clips")
    print(ev.markdown_table({k: v for k, v in results.items() if k not in ("quantizer", "text_separation")}))
    for name in ("swap", "swap_tokens"):
        if name in results["mulan"]:
            print(f"{name} (own caption beats the restated one; chance 0.50): " + ", ".join(
                f"{a} {v['accuracy']:.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"
                for a, v in results["mulan"][name].items()))
    print("text separation (mean cosines; lower separates): " + ", ".join(f"{k} {v:.3f}" for k, v in separation.items()))
    if "quantizer" in results:
        q = results["quantizer"]
        print(f"quantization: cosine lost {q['audio']['cosine_lost']:.4f} (audio), "
              f"{q['text']['cosine_lost']:.4f} (text)")
    print(f"wrote {out}")
    return results


def check_texts(texts, flag: str = "--text") -> None:
    """Refuses, in one line, a caption that is not UTF-8 text.

    Python decodes non-UTF-8 bytes of argv to lone surrogates ("caf\\udce9" for b"caf\\xe9"); the text tower's
    tokenizer would raise a TypeError on them deep inside."""
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(t) if isinstance(t, str) else t
            raise ValueError(f"{flag} {raw!r} is not UTF-8 text: pass captions encoded as UTF-8") from None


def embed(args: argparse.Namespace) -> dict:
    import numpy as np

    from musiclm_jax.audio.io import AudioLoadError, load_audio, reject_directories
    from musiclm_jax.mulan.api import MuLan

    check_texts(args.text)
    reject_directories(args.audio, "--audio_dir")
    files = list(args.audio)
    if getattr(args, "audio_dir", None):
        from musiclm_jax.audio.io import list_audio_files

        files += list_audio_files(os.path.expanduser(args.audio_dir))
    if not args.text and not files:
        raise ValueError("nothing to embed: pass --text CAPTION, --audio FILE and/or --audio_dir FOLDER")
    mulan = MuLan.from_checkpoint(args.model_dir)
    out = {"text": [], "audio": [], "skipped": []}
    if args.text:
        emb = mulan.embed_text(args.text)
        toks = mulan.tokens_from_embeddings(emb) if args.tokens else None
        for i, text in enumerate(args.text):
            out["text"].append({"text": text, "embedding": emb[i].tolist(),
                                **({"tokens": toks[i].tolist()} if toks is not None else {})})
    for path in files:
        try:
            wave, sr = load_audio(path)
            emb = mulan.embed_audio(wave, sr)
        except (AudioLoadError, ValueError) as e:  # a bad file is named and skipped, never fatal
            out["skipped"].append({"path": path, "reason": str(e)})
            continue
        item = {"path": path, "embedding": emb.tolist()}
        if args.tokens:
            item["tokens"] = mulan.tokens_from_embeddings(emb[None])[0].tolist()
        out["audio"].append(item)
    skipped = "; ".join(f"{s['path']} ({s['reason']})" for s in out["skipped"])
    if not out["text"] and not out["audio"]:
        raise ValueError(f"nothing embedded: all {len(out['skipped'])} audio file(s) failed: {skipped}")
    for item in out["text"] + out["audio"]:
        name = item["text"][:60] if "text" in item else (
            item["path"] if len(item["path"]) <= 60 else "..." + item["path"][-57:])  # a path's end names the file
        head = " ".join(f"{v:+.3f}" for v in np.asarray(item["embedding"])[:4])
        tokens = f" tokens {item['tokens']}" if "tokens" in item else ""
        print(f"{name!r}: [{head} ...]{tokens}")
    if out["skipped"]:
        print(f"skipped {len(out['skipped'])} of {len(files)} audio file(s): {skipped}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f)
        print(f"wrote {args.out}")
    return out
