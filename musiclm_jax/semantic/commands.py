"""`musiclm-jax semantic {train,fit-kmeans,tokenize,eval,probe}`: w2v-BERT training, k-means, semantic tokens.

Imports stay light here; jax, the model and the data load inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import os

from musiclm_jax.train import gin_utils
from musiclm_jax.train.steps import add_steps_argument

EXAMPLES = """Examples:
  musiclm-jax semantic train --gin_file=gin/experiments/w2v_bert_tiny_synthetic.gin --model_dir=/tmp/w2v_tiny --steps 300
  musiclm-jax semantic fit-kmeans --model_dir=/tmp/w2v_tiny --audio_dir=demo_out --num_clusters=64
  musiclm-jax semantic tokenize --model_dir=/tmp/w2v_tiny --audio demo_out/clip.wav --out /tmp/tokens.jsonl
  musiclm-jax semantic eval --model_dir=/tmp/w2v_tiny --audio_dir=demo_out
  musiclm-jax semantic probe --model_dir=/tmp/w2v_tiny --synthcaps=small --data_dir=~/tensorflow_datasets
"""


def _add_corpus_args(p) -> None:
    p.add_argument("--audio_dir", default=None, help="a folder of audio files (any rate; mixed to mono, resampled)")
    p.add_argument("--synthcaps", default=None, help="a built synthcaps TFDS config instead (tiny, small, ...)")
    p.add_argument("--data_dir", default=None, help="TFDS data directory holding the built synthcaps")
    p.add_argument("--split", default="train", help="synthcaps split")
    p.add_argument("--limit", type=int, default=None, help="use at most this many clips")


def register(subparsers) -> None:
    sem = subparsers.add_parser("semantic", help="w2v-BERT + k-means: semantic tokens (25 Hz)",
                                description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = sem.add_subparsers(dest="semantic_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="train w2v-BERT (contrastive + MLM) with the shared trainer")
    gin_utils.add_gin_arguments(t, "gin file (repeatable), e.g. gin/experiments/w2v_bert_tiny_synthetic.gin")
    t.add_argument("--model_dir", default=None, help="where checkpoints go (binds MODEL_DIR)")
    add_steps_argument(t)
    t.set_defaults(func=train)

    k = sub.add_parser("fit-kmeans", help="k-means on features of a trained checkpoint; saved in MODEL_DIR/kmeans")
    k.add_argument("--model_dir", required=True)
    _add_corpus_args(k)
    k.add_argument("--num_clusters", type=int, default=1024)
    k.add_argument("--max_frames", type=int, default=200_000, help="frames sampled from the corpus")
    k.add_argument("--batch_size", type=int, default=4096)
    k.add_argument("--num_steps", type=int, default=200)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--chroma_weight", type=float, default=0.0,
                   help="cluster the unit-normalised features beside the frame's chroma times this (0: the paper's "
                   "plain features; the quickstart uses 1.5, see `semantic probe --frames`)")
    k.set_defaults(func=fit_kmeans)

    z = sub.add_parser("tokenize", help="semantic tokens of audio files, as JSON lines")
    z.add_argument("--model_dir", required=True)
    z.add_argument("--audio", action="append", default=[], help="an audio file (repeatable)")
    z.add_argument("--audio_dir", default=None, help="every audio file of a folder")
    z.add_argument("--out", required=True, help="output .jsonl: one {path, tokens, tokenizer} per file")
    z.set_defaults(func=tokenize)

    e = sub.add_parser("eval", help="cluster usage and entropy, tokens/s, two-soundfont agreement (synthcaps)")
    e.add_argument("--model_dir", required=True)
    _add_corpus_args(e)
    e.add_argument("--out", default=None,
                   help="JSON results (default: out/eval/<model folder name>/semantic_eval.json)")
    e.set_defaults(func=evaluate)

    p = sub.add_parser("probe", help="linear probes (genre, tempo, key, mode, instrument) on features, token "
                       "histograms, random-init w2v-BERT and MFCC")
    p.add_argument("--model_dir", required=True)
    _add_corpus_args(p)
    p.add_argument("--split_mode", choices=("heldout", "random"), default="heldout",
                   help="heldout: fit on --split (train), score on --test_split (SynthCaps holds out genre x "
                   "instrument combinations there); random: 75/25 of --split, stratified per attribute and "
                   "grouped by score")
    p.add_argument("--test_split", default="test", help="synthcaps split scored in heldout mode")
    p.add_argument("--attributes", default=",".join(("genre", "tempo", "tonic", "key", "mode", "instrument")),
                   help="comma-separated: genre, tempo, tonic, key, mode, instrument")
    p.add_argument("--layer", type=int, default=None, help="w2v-BERT feature layer (default: the tokenizer's)")
    p.add_argument("--seed", type=int, default=0, help="random split and random-init parameters")
    p.add_argument("--no_random_init", action="store_true", help="skip the random-init w2v-BERT rows")
    p.add_argument("--frames", action="store_true",
                   help="also the time-resolved probes of the token stream: pitch class of each frame and onset "
                   "frames (ROC AUC), beside random-init and log-mel k-means tokens (needs the k-means)")
    p.add_argument("--out", default=None,
                   help="JSON results (default: out/eval/<model folder name>/semantic_probe_<mode>.json)")
    p.set_defaults(func=probe)


def train(args: argparse.Namespace) -> dict:
    from musiclm_jax.train.launch import done_line, launch

    if not args.gin_file:
        raise ValueError("no --gin_file given: pass e.g. --gin_file=gin/experiments/w2v_bert_tiny_synthetic.gin")
    summary = launch("musiclm_jax.train.trainer:train", args.gin_file, args.gin_bindings, args.gin_search_path,
                     registrations=("musiclm_jax.codec.data", "musiclm_jax.semantic.family"), model_dir=args.model_dir,
                     steps=args.steps)
    summary.pop("state", None)
    print(done_line(summary, "loss", "contrastive_loss", "mlm_loss"))
    return summary


def load_corpus(args: argparse.Namespace, sample_rate: int = 16000) -> tuple[list, list[str], list[dict]]:
    """(waves at `sample_rate`, names, SynthCaps attributes or {}) from --audio_dir or --synthcaps."""
    if bool(args.audio_dir) == bool(args.synthcaps):
        raise ValueError("give exactly one corpus: --audio_dir FOLDER or --synthcaps CONFIG (with --data_dir)")
    if args.audio_dir:
        from musiclm_jax.audio.io import list_audio_files, load_clips

        files = list_audio_files(os.path.expanduser(args.audio_dir))[:args.limit]
        waves, skipped = load_clips(files, sample_rate, min_samples=sample_rate // 25)
        if not waves:
            raise ValueError(f"no usable audio in {args.audio_dir}: all {len(skipped)} file(s) failed: "
                             + "; ".join(skipped))
        if skipped:
            print(f"skipped {len(skipped)} of {len(files)} file(s): " + "; ".join(skipped))
        names = [f for f in files if not any(s.startswith(os.path.basename(f) + " ") for s in skipped)]
        return waves, names, [{} for _ in waves]
    from musiclm_jax.audio.io import resample
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips

    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    clips = synthcaps_clips(split=args.split, config=args.synthcaps, data_dir=data_dir, limit=args.limit)
    waves = [resample(c["audio"], c["sample_rate"], sample_rate) for c in clips]
    return waves, [str(c.get("score_id", i)) for i, c in enumerate(clips)], clips


def fit_kmeans(args: argparse.Namespace) -> dict:
    import logging

    from musiclm_jax.semantic.run import fit_kmeans as fit

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    waves, _, _ = load_corpus(args)
    if not waves:
        raise ValueError("the corpus has no usable audio")
    report = fit(args.model_dir, waves, 16000, num_clusters=args.num_clusters, max_frames=args.max_frames,
                 batch_size=args.batch_size, num_steps=args.num_steps, seed=args.seed,
                 chroma_weight=args.chroma_weight)
    print(f"k-means {args.num_clusters} clusters on {report['num_frames']} frames: "
          f"{100 * report['used_fraction']:.0f}% used, normalized entropy {report['normalized_entropy']:.3f}; "
          f"saved to {os.path.join(args.model_dir, 'kmeans')}")
    return report


def tokenize(args: argparse.Namespace) -> dict:
    from musiclm_jax.audio.io import AudioLoadError, load_audio, reject_directories
    from musiclm_jax.audio.io import list_audio_files
    from musiclm_jax.semantic.api import SemanticTokenizer

    reject_directories(args.audio, "--audio_dir")
    files = list(args.audio) + (list_audio_files(os.path.expanduser(args.audio_dir)) if args.audio_dir else [])
    if not files:
        raise ValueError("nothing to tokenize: pass --audio FILE (repeatable) or --audio_dir FOLDER")
    tok = SemanticTokenizer.from_checkpoint(args.model_dir)
    written, skipped = 0, []
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    partial = args.out + ".partial"
    try:
        with open(partial, "w") as out:
            for path in files:
                try:
                    wave, sr = load_audio(path)
                    ids = tok.tokens(wave, sr)[0]
                except (AudioLoadError, ValueError) as e:  # a bad file is named and skipped, never fatal
                    skipped.append(f"{path} ({e})")
                    continue
                out.write(json.dumps({"path": path, "tokens": ids.tolist(), "tokenizer": tok.describe()}) + "\n")
                written += 1
        if not written:
            raise ValueError(f"no file tokenized: all {len(skipped)} failed: " + "; ".join(skipped))
        os.replace(partial, args.out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    if skipped:
        print(f"skipped {len(skipped)} of {len(files)} file(s): " + "; ".join(skipped))
    print(f"wrote tokens of {written} file(s) to {args.out} (checkpoint {tok.fingerprint})")
    return {"written": written, "skipped": skipped}


def evaluate(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import default_output
    from musiclm_jax.semantic import evaluate as ev
    from musiclm_jax.semantic.api import SemanticTokenizer

    tok = SemanticTokenizer.from_checkpoint(args.model_dir)
    waves, names, clips = load_corpus(args)
    if not waves:
        raise ValueError("the corpus has no usable audio")
    results = ev.evaluate_tokenizer(tok, waves, 16000, clips)
    out = args.out or default_output(args.model_dir, "semantic_eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    for key, value in results.items():
        print(f"{key}: {value}")
    print(f"wrote {out}")
    return results


def probe(args: argparse.Namespace) -> dict:
    import time

    from musiclm_jax.eval import default_output
    from musiclm_jax.eval import semantic_probe as pr
    from musiclm_jax.semantic.api import SemanticTokenizer

    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    unknown = [a for a in attributes if a not in pr.LABELS]
    if unknown or not attributes:
        raise ValueError(f"unknown --attributes {unknown or attributes}: use some of {', '.join(pr.LABELS)}")
    if args.split_mode == "heldout" and args.audio_dir:
        raise ValueError("--split_mode heldout needs --synthcaps (a train and a test split); use --split_mode random")
    start = time.perf_counter()
    waves, _, attrs = load_corpus(args)
    clips = [dict(a, audio=w) for w, a in zip(waves, attrs)]
    test = []
    if args.split_mode == "heldout":
        waves_t, _, attrs_t = load_corpus(argparse.Namespace(**{**vars(args), "split": args.test_split}))
        test = [dict(a, audio=w) for w, a in zip(waves_t, attrs_t)]
    tok = SemanticTokenizer.from_checkpoint(args.model_dir, require_kmeans=False, layer=args.layer)
    if tok.kmeans is not None and tok.kmeans.meta.get("feature_layer", tok.layer) != tok.layer:
        print(f"k-means was fitted on layer {tok.kmeans.meta['feature_layer']}, not {tok.layer}: no token rows")
        tok.kmeans = None
    elif tok.kmeans is None:
        print(f"no k-means in {args.model_dir}: no token-histogram rows")
    extractors = pr.w2v_bert_extractors(tok, "trained")
    if not args.no_random_init:
        rand = pr.random_init_tokenizer(tok.cfg, seed=args.seed, layer=tok.layer, chroma_weight=tok.chroma_weight)
        extractors += pr.w2v_bert_extractors(rand, "random-init", kmeans_fit_waves=[c["audio"] for c in clips],
                                             num_clusters=tok.num_tokens or None, seed=args.seed)
    extractors.append(pr.mfcc_extractor())
    if args.split_mode == "heldout":
        rows = pr.probe_table(clips, test, extractors, attributes)
        protocol = (f"fit on {args.split} ({len(clips)} clips), scored on {args.test_split} ({len(test)} clips; "
                    "held-out genre x instrument combinations)")
    else:
        rows = pr.probe_table_random(clips, extractors, attributes, seed=args.seed)
        protocol = (f"random 75/25 split of {args.split} ({len(clips)} clips) per attribute, stratified by it, "
                    f"grouped by score, seed {args.seed}")
    table = pr.markdown_table(rows, attributes)
    results = {"split_mode": args.split_mode, "protocol": protocol, "synthcaps": args.synthcaps,
               "model_dir": args.model_dir, "fingerprint": tok.fingerprint, "feature_layer": tok.layer,
               "num_clusters": tok.num_tokens, "chroma_weight": tok.chroma_weight, "attributes": attributes,
               "rows": rows, "markdown": table}
    if args.frames:
        if args.split_mode == "heldout":
            train_w, test_w = [c["audio"] for c in clips], [c["audio"] for c in test]
        else:  # by score, as the clip probes: both renderings of a score on one side
            tr, te = pr.stratified_group_split(["all"] * len(clips), [c.get("score_id", i) or i
                                                                        for i, c in enumerate(clips)], seed=args.seed)
            train_w, test_w = [clips[i]["audio"] for i in tr], [clips[i]["audio"] for i in te]
        rand = None if args.no_random_init else pr.random_init_tokenizer(tok.cfg, seed=args.seed, layer=tok.layer,
                                                                    chroma_weight=tok.chroma_weight)
        frame_rows = pr.frame_probe_table(train_w, test_w, tok, random_tok=rand, seed=args.seed)
        results["frame_rows"], results["frame_markdown"] = frame_rows, pr.frame_markdown_table(frame_rows)
    results["seconds"] = round(time.perf_counter() - start, 1)
    out = args.out or default_output(args.model_dir, f"semantic_probe_{args.split_mode}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"linear-probe accuracy (%), {protocol}:\n")
    print(table)
    if args.frames:
        print(f"\nframe probes of the token stream ({len(train_w)} clips fit, {len(test_w)} scored):\n")
        print(results["frame_markdown"])
    print(f"\nwrote {out}")
    return results
