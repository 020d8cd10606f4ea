"""`musiclm-jax eval`: score generated audio (FAD, KLD, MCC, SynthCaps adherence, diversity, memorization) with
baselines, into JSON + Markdown + PNG; `eval export-synthcaps` and `eval fit-probe` prepare references and probes.

Imports stay light here; numpy-heavy and model code load inside the handlers.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from musiclm_jax.sampling import add_decoding_args, decoding_overrides

EXAMPLES = """Examples:
  musiclm-jax eval export-synthcaps --data_dir ~/tfds --config small --split test --out eval/ref
  musiclm-jax eval export-synthcaps --data_dir ~/tfds --config small --split train --out eval/train --limit 500
  musiclm-jax eval fit-probe --reference_dir eval/train --backend mel --out_dir eval/probes
  musiclm-jax infer --prompts eval/ref/infer_prompts.jsonl --out_dir out/gen --model_dir weights/musiclm --duration 10
  musiclm-jax eval --audio_dir out/gen --reference_dir eval/ref \\
      --train_dir eval/train --backend mel --backend mulan:runs/mulan --mulan_dir runs/mulan \\
      --probe eval/probes/probe_mel_instrument.npz --probe eval/probes/probe_mel_genre.npz \\
      --baselines real random retrieval codec:runs/codec --out_dir eval/report

The prompts file is JSONL: rows of `musiclm-jax infer` ({"id", "prompt", "wav", "tokens"?}) or hand-written
{"wav": path, "prompt": str, "bpm"?, "key"?, "mode"?, "instrument"?, "genre"?, "reference"?: path}. Generated rows
are paired with reference clips by "reference" path, else "id", else identical prompt text, and inherit their
truth fields. Outputs: OUT_DIR/results.json, report.md, metric_*.png, samples_*.png.
"""


def register(subparsers) -> None:
    e = subparsers.add_parser("eval", help="evaluate generated audio: FAD, KLD, MCC, adherence, diversity, memorization",
                              description=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--audio_dir", default=None, help="folder of generated audio (wav paths resolve against it)")
    e.add_argument("--prompts", default=None, help="JSONL of generated items (default AUDIO_DIR/prompts.jsonl, else the "
                   "results.jsonl that `musiclm-jax infer` writes)")
    e.add_argument("--name", default=None, help="name of the evaluated system in the report (default: the folder)")
    e.add_argument("--reference_dir", default=None,
                   help="real clips with truth: a folder with prompts.jsonl (see `eval export-synthcaps`)")
    e.add_argument("--train_dir", default=None, help="training clips (same layout) for the random / retrieval baselines")
    e.add_argument("--backend", action="append", default=None,
                   help="embedding backend (repeatable): mel, musicnn, mulan:DIR, module:pkg.mod:factory (default mel)")
    e.add_argument("--mulan_dir", default=None, help="MuLan checkpoint for MCC and the retrieval baseline")
    e.add_argument("--baselines", nargs="*", default=[], metavar="B",
                   help="real, random, retrieval, codec:DIR (scored with the same metrics)")
    e.add_argument("--probe", action="append", default=[], help="probe .npz from `eval fit-probe` (repeatable)")
    e.add_argument("--train_tokens", default=None,
                   help="training semantic tokens for memorization (.npy / .npz / .jsonl / folder of .npy)")
    e.add_argument("--mem_window", type=int, default=125, help="memorization window in tokens (125 = 5 s at 25 Hz)")
    e.add_argument("--mem_threshold", type=float, default=0.5, help="approximate match: Hamming fraction below this")
    e.add_argument("--fad_sizes", type=int, nargs="*", default=[], help="also report FAD at these sample counts")
    e.add_argument("--out_dir", default=None, help="report folder (required)")
    e.add_argument("--no_plots", action="store_true")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=evaluate)
    sub = e.add_subparsers(dest="eval_command", required=False, metavar="[ACTION]")

    x = sub.add_parser("export-synthcaps", help="a built SynthCaps split -> wavs + prompts.jsonl with truth fields")
    x.add_argument("--data_dir", default=None, help="TFDS data directory")
    x.add_argument("--config", default="tiny", help="synthcaps config name (tiny, small, small_5s_n80, ...)")
    x.add_argument("--split", default="test")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--limit", type=int, default=None)
    x.set_defaults(func=export_synthcaps)

    c = sub.add_parser("chain", help="stage-by-stage diagnosis: real, codec, fine, acoustic, audio-token and text rows",
                       description=__import__("musiclm_jax.eval.chain", fromlist=["x"]).__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--model_dir", default=None, help="MusicLM.from_pretrained directory (default: the shipped one)")
    c.add_argument("--reference_dir", required=True, help="real clips with truth (`eval export-synthcaps` output)")
    c.add_argument("--rows", nargs="+", default=None, metavar="ROW", help="rows to run (default all, in order)")
    c.add_argument("--limit", type=int, default=None, help="use the first N reference clips")
    c.add_argument("--duration", type=float, default=8.0, help="seconds per clip (references are cut to it)")
    c.add_argument("--batch_size", type=int, default=8)
    c.add_argument("--guidance_scale", type=float, default=None, help="of the text_guided row (default: the model's)")
    add_decoding_args(c, "of every generated row; default: the model's own (musiclm.json 'sampling'), else %s")
    c.add_argument("--tempo", default="prompt", choices=("prompt", "reference", "none"),
                   help="a tempo-conditioned model's tempo: prompt (text rows read the caption's stated BPM, token "
                   "rows get none), reference (every row gets the clip's true BPM: an oracle), none")
    c.add_argument("--key", default="prompt", choices=("prompt", "reference", "none"),
                   help="a key-conditioned model's key, from the same sources as --tempo (reference: the clip's true "
                   "key and mode)")
    c.add_argument("--backend", action="append", default=None, help="embedding backend(s) for FAD (default mel)")
    c.add_argument("--probe", action="append", default=[], help="probe .npz from `eval fit-probe` (repeatable)")
    c.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95 %% intervals")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out_dir", default=None, help="default out/eval/<model folder>/chain")
    c.add_argument("--conditioning", nargs="?", const="coarse", default=None, choices=("coarse", "semantic"),
                   help="only measure whether a stage uses its conditioning (no generation). coarse (the default): "
                   "teacher-forced NLL of the clips' own codes given their semantic tokens, shifted ones, another "
                   "clip's, and another clip's MuLan tokens (writes conditioning.json); semantic: NLL of the clips' "
                   "own semantic tokens given the MuLan tokens of the clip, of another clip, none, and of the clip "
                   "played faster, slower or transposed (writes semantic_conditioning.json)")
    c.add_argument("--stretch", type=float, default=1.25, help="with --conditioning semantic: tempo factor of the "
                   "faster version (the slower one divides by it)")
    c.add_argument("--semitones", type=float, default=6.0, help="with --conditioning semantic: transposition of "
                   "the transposed version")
    c.add_argument("--shift_s", type=float, default=0.2, help="with --conditioning: how far the shifted semantic "
                   "tokens move (seconds)")
    c.set_defaults(func=chain)

    m = sub.add_parser("melody", help="melody adherence of a melody-conditioned model on held-out tunes, beside "
                       "text-only generation and a random clip",
                       description="Arms per held-out line: with the melody, the same caption and seed without "
                       "it, a random held-out clip, the real arrangement (see musiclm_jax/eval/melody.py).")
    m.add_argument("--model_dir", required=True, help="a melody-conditioned MusicLM.from_pretrained directory")
    m.add_argument("--bank_dir", required=True, help="a `melody render-bank` of held-out lines (its --seconds = the "
                   "generated length)")
    m.add_argument("--config", required=True, help="the SynthCaps config the bank was rendered from (captions, audio)")
    m.add_argument("--data_dir", required=True, help="its TFDS data directory")
    m.add_argument("--split", default="test")
    m.add_argument("--timbre", default="whistle", help="the bank sound given as the melody (e.g. whistle, sine, voice)")
    m.add_argument("--limit", type=int, default=32)
    m.add_argument("--batch_size", type=int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out_dir", default=None, help="default out/eval/<model folder>/melody")
    m.set_defaults(func=melody)

    p = sub.add_parser("fit-probe", help="fit instrument / genre probes on real audio embeddings (.npz)")
    p.add_argument("--reference_dir", required=True, help="folder with prompts.jsonl carrying the truth labels")
    p.add_argument("--backend", default="mel")
    p.add_argument("--attribute", action="append", default=None, help="instrument and/or genre (default both)")
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--out_dir", required=True)
    p.set_defaults(func=fit_probe)


def _prompts_in(folder: str, what: str) -> str:
    """A prompts file given directly, or the folder's prompts.jsonl, or its results.jsonl (`musiclm-jax infer`)."""
    from musiclm_jax.eval.data import PROMPTS_FILE

    folder = os.path.expanduser(folder)
    if os.path.isfile(folder):
        return folder
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} {folder} does not exist")
    for name in (PROMPTS_FILE, "results.jsonl"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{what} {folder} has no {PROMPTS_FILE} (nor an infer results.jsonl): pass --prompts, "
                            "make one with `musiclm-jax eval export-synthcaps`, or write JSONL rows "
                            "{\"wav\", \"prompt\"}")


def export_synthcaps(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval.data import export_synthcaps as run

    res = run(args.data_dir, args.config, args.split, args.out, args.limit)
    print(f"wrote {res['clips']} clips, {res['prompts']} (truth) and {res['infer_prompts']} (for musiclm-jax infer)")
    return res


def fit_probe(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import metrics
    from musiclm_jax.eval.backends import get_backend
    from musiclm_jax.eval.data import load_items
    from musiclm_jax.eval.evaluate import _by_rate

    attributes = args.attribute or ["instrument", "genre"]
    for attr in attributes:
        if attr not in ("instrument", "genre"):
            raise ValueError(f"--attribute {attr!r}: use instrument or genre")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    items, skipped = load_items(_prompts_in(args.reference_dir, "--reference_dir"))
    if not items:
        raise ValueError(f"no usable clips in {args.reference_dir} ({len(skipped)} skipped"
                         + (": " + "; ".join(f"{n} ({r})" for n, r in skipped.items) if len(skipped) else "") + ")")
    labelled = {}
    for attr in attributes:
        keep = [i for i, it in enumerate(items) if it.truth.get(attr)]
        labels = [items[i].truth[attr] for i in keep]
        if len(set(labels)) < 2:
            print(f"{attr}: fewer than two classes among {len(keep)} labelled clip(s); no probe written")
            continue
        labelled[attr] = (keep, labels)
    if not labelled:
        raise ValueError(f"no probe to fit: no --attribute of {', '.join(attributes)} has two or more classes among "
                         f"the {len(items)} usable clip(s) of {args.reference_dir} (their prompts.jsonl rows need "
                         f"those truth fields; {len(skipped)} item(s) skipped)")
    backend = get_backend(args.backend)
    emb = _by_rate(backend, items, "embed")
    os.makedirs(args.out_dir, exist_ok=True)
    res = {}
    for attr, (keep, labels) in labelled.items():
        probe = metrics.fit_probe(emb[keep], labels, l2=args.l2, backend=args.backend, attribute=attr)
        safe = args.backend.split(":")[0]
        path = probe.save(os.path.join(args.out_dir, f"probe_{safe}_{attr}.npz"))
        acc = metrics.probe_accuracy(probe, emb[keep], labels)["acc"]
        res[attr] = {"path": path, "classes": len(probe.classes), "train_acc": acc, "n": len(keep)}
        print(f"{attr}: {len(probe.classes)} classes, {len(keep)} clips, train accuracy {acc:.3f} -> {path}")
    if skipped:
        print(f"skipped {len(skipped)} item(s): " + "; ".join(f"{n} ({r})" for n, r in skipped.items))
    return res


def melody(args: argparse.Namespace) -> dict:
    import numpy as np

    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.data.synthcaps.clips import synthcaps_clips
    from musiclm_jax.eval import default_output
    from musiclm_jax.eval.melody import evaluate_melody
    from musiclm_jax.melody.data import load_bank
    from musiclm_jax.pipeline import MusicLM

    if args.limit < 2 or args.batch_size < 1:
        raise ValueError("--limit must be >= 2 (each line's random clip is another line) and --batch_size >= 1")
    audio, names, meta = load_bank(os.path.expanduser(args.bank_dir), args.split)
    if args.timbre not in meta["timbres"]:
        raise ValueError(f"--timbre {args.timbre!r} is not in the bank: choose one of {meta['timbres']}")
    t = meta["timbres"].index(args.timbre)
    clips = {c["clip_id"]: c for c in synthcaps_clips(split=args.split, config=args.config,
                                                       data_dir=os.path.expanduser(args.data_dir),
                                                       extra_keys=("clip_id",))}
    lines, missing = [], []
    for i, name in enumerate(names[:args.limit]):
        clip = clips.get(name)
        if clip is None:
            missing.append(name)
            continue
        lines.append({"name": name, "melody": audio[i, t].astype(np.float32) / 32768.0,
                      "sample_rate": meta["sample_rate"], "caption": clip["caption"], "real": clip["audio"],
                      **{k: clip.get(k) for k in ("bpm", "key", "mode")}})
    if missing:
        print(f"skipped {len(missing)} bank line(s) not in synthcaps/{args.config} {args.split}: {', '.join(missing)}")
    model_dir = os.path.expanduser(args.model_dir)
    lm = MusicLM.from_pretrained(model_dir)
    if lm.melody is None:
        raise ValueError(f"{model_dir} is not melody-conditioned (musiclm.json melody_levels = 0, no melody/)")
    report, waves = evaluate_melody(lm, lines, seconds=float(meta["seconds"]), batch_size=args.batch_size,
                                    seed=args.seed)
    report.update(model_dir=model_dir, bank_dir=args.bank_dir, timbre=args.timbre, skipped=missing)
    out_dir = args.out_dir or default_output(model_dir, "melody")
    os.makedirs(out_dir, exist_ok=True)
    for arm in ("melody", "text"):
        for i in range(min(4, len(lines))):
            write_wav(os.path.join(out_dir, f"{arm}_{i:02d}.wav"), waves[arm][i], lm.sample_rate)
    with open(os.path.join(out_dir, "melody.json"), "w") as f:
        json.dump(report, f, indent=1)
    c = report["chroma_match"]
    fmt = lambda s: f"{s['mean']:.3f} {s['interval']}" if s["mean"] is not None else "n/a"  # noqa: E731
    print("chroma match: " + "; ".join(f"{arm} {fmt(c[arm])}" for arm in c)
          + f"; melody - text {fmt(report['melody_minus_text'])}")
    for metric, t in report["text_adherence"].items():
        print(f"text adherence {metric}: melody {fmt(t['melody'])}; text {fmt(t['text'])}; "
              f"melody - text {fmt(t['melody_minus_text'])}")
    print(f"wrote {out_dir}/melody.json")
    return report


def chain(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import chain as chain_lib
    from musiclm_jax.eval import default_output, metrics
    from musiclm_jax.eval.backends import get_backend
    from musiclm_jax.eval.data import load_items
    from musiclm_jax.pipeline import MusicLM
    from musiclm_jax.resources import shipped_musiclm_dir

    rows = chain_lib.check_rows(args.rows or list(chain_lib.ROWS))
    sampling = decoding_overrides(args)
    if args.duration <= 0 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--duration must be > 0, --batch_size and --limit >= 1")
    probes = [metrics.Probe.load(os.path.expanduser(p)) for p in args.probe]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    refs, skipped = load_items(_prompts_in(args.reference_dir, "--reference_dir"))
    refs = refs[:args.limit] if args.limit else refs
    if not refs:
        raise ValueError(f"no usable reference clips in {args.reference_dir}")
    model_dir = os.path.expanduser(args.model_dir) if args.model_dir else shipped_musiclm_dir()
    out_dir = args.out_dir or default_output(model_dir, "chain")
    model = MusicLM.from_pretrained(model_dir)
    if args.conditioning:
        return _conditioning(model, refs, out_dir, args)
    backends = {spec: get_backend(spec) for spec in args.backend or ["mel"]}
    report = chain_lib.diagnose(model, refs, out_dir, backends=backends, probes=probes, rows=rows,
                                duration_s=args.duration, batch_size=args.batch_size, seed=args.seed,
                                guidance_scale=args.guidance_scale, bootstrap=args.bootstrap, skipped=skipped,
                                sampling=sampling, tempo=args.tempo, key=args.key)
    with open(os.path.join(out_dir, "chain.md")) as f:
        print(f.read())
    if len(skipped):
        print(f"skipped {len(skipped)} clip(s): " + "; ".join(f"{n} ({r})" for n, r in skipped.items))
    print(f"wrote {out_dir}/chain.json, chain.md and one folder of wavs per generated row")
    return report


def _conditioning(model, refs, out_dir: str, args: argparse.Namespace) -> dict:
    import json

    import numpy as np

    from musiclm_jax.audio.io import resample
    from musiclm_jax.eval import chain as chain_lib

    sr = model.sample_rate
    if args.shift_s < 0:
        raise ValueError(f"--shift_s must be >= 0 seconds, got {args.shift_s}")
    semantic = getattr(args, "conditioning", "coarse") == "semantic"
    if semantic and (args.stretch <= 1 or not np.isfinite(args.semitones)):
        raise ValueError(f"--stretch must be > 1 and --semitones a number, got {args.stretch}, {args.semitones}")
    seconds = model.windows.semantic_s if semantic else model.windows.coarse_s + args.shift_s
    need = round(seconds * sr)
    waves = [resample(np.asarray(r.wave, np.float32), r.sample_rate, sr) for r in refs]
    waves = np.stack([w[:need] for w in waves if len(w) >= need]) if waves else np.zeros((0, need))
    if len(waves) < 2:
        raise ValueError(f"--conditioning needs at least 2 reference clips of >= {need / sr:.1f} s")
    os.makedirs(out_dir, exist_ok=True)
    if semantic:
        res = chain_lib.semantic_conditioning_use(model, waves, sr, stretch=args.stretch, semitones=args.semitones)
        with open(os.path.join(out_dir, "semantic_conditioning.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(f"semantic stage, teacher-forced NLL (nats/token) of {res['clips']} clips' own semantic tokens, "
              f"{res['crop_s']:g} s crops (and their first {res['first_s']:g} s), given the MuLan tokens of:")
        for case in chain_lib.SEMANTIC_CASES:
            cells = [f"{res[case + sfx]:.3f}" + ("" if case == "own" else f" ({res['delta_' + case + sfx]:+.3f})")
                     for sfx in ("", "_first")]
            changed = res.get(f"mulan_changed_{case}")
            changed = "" if changed is None else f"  [{changed:.0%} of MuLan tokens differ]"
            print(f"  {case:28s} {cells[0]:18s} first: {cells[1]:18s}{changed}")
        print(f"wrote {out_dir}/semantic_conditioning.json")
        return res
    res = chain_lib.conditioning_use(model, waves, sr, shift_s=args.shift_s)
    with open(os.path.join(out_dir, "conditioning.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"coarse stage, teacher-forced NLL (nats/token) of {res['clips']} clips' own codes, {res['crop_s']:g} s crops:")
    for case in chain_lib.CONDITIONING_CASES:
        delta = "" if case == "own" else f"  ({res['delta_' + case]:+.3f})"
        print(f"  {case:26s} {res[case]:.3f}{delta}")
    print(f"wrote {out_dir}/conditioning.json")
    return res


def evaluate(args: argparse.Namespace) -> dict:
    from musiclm_jax.eval import baselines as B
    from musiclm_jax.eval import metrics
    from musiclm_jax.eval.backends import get_backend
    from musiclm_jax.eval.data import Skipped, load_items, load_training_tokens
    from musiclm_jax.eval.evaluate import Evaluator
    from musiclm_jax.eval.report import write_report

    if not args.out_dir:
        raise ValueError("pass --out_dir REPORT (where results.json, report.md and the PNGs go)")
    if not (args.audio_dir or args.prompts or args.baselines):
        raise ValueError("nothing to evaluate: pass --audio_dir DIR (and/or --prompts FILE), or --baselines with "
                         "--reference_dir")
    if args.baselines and not args.reference_dir:
        raise ValueError("--baselines need --reference_dir (the real clips they are built from)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    skipped = Skipped()
    refs = []
    if args.reference_dir:
        refs, skipped = load_items(_prompts_in(args.reference_dir, "--reference_dir"), skipped=skipped)
        if not refs:
            raise ValueError(f"no usable reference clips in {args.reference_dir}")
    systems: dict = {}
    highlight = []
    if args.audio_dir or args.prompts:
        audio_dir = os.path.expanduser(args.audio_dir) if args.audio_dir else None
        prompts = os.path.expanduser(args.prompts) if args.prompts else _prompts_in(audio_dir, "--audio_dir")
        items, skipped = load_items(prompts, audio_dir, skipped)
        if not items:
            raise ValueError(f"no usable generated items in {prompts} ({len(skipped)} skipped: "
                             f"{skipped.items[0][0]}: {skipped.items[0][1]})" if len(skipped) else
                             f"no items in {prompts}")
        name = args.name or os.path.basename(os.path.normpath(audio_dir or os.path.dirname(os.path.abspath(prompts))))
        systems[name] = (items, False)
        highlight.append(name)
    mulan = None
    if args.mulan_dir:
        from musiclm_jax.mulan.api import MuLan

        mulan = MuLan.from_checkpoint(os.path.expanduser(args.mulan_dir))
    train = []
    if args.train_dir:
        train, skipped = load_items(_prompts_in(args.train_dir, "--train_dir"), skipped=skipped)
    systems.update(B.build_baselines(args.baselines, refs, train, mulan, args.seed))
    backends = {}
    for spec in args.backend or ["mel"]:
        backends[spec] = get_backend(spec)
    probes = [metrics.Probe.load(os.path.expanduser(p)) for p in args.probe]
    train_tokens = load_training_tokens(args.train_tokens) if args.train_tokens else None
    ev = Evaluator(refs, backends, mulan=mulan, probes=probes, train_tokens=train_tokens, mem_window=args.mem_window,
                   mem_threshold=args.mem_threshold, fad_sizes=args.fad_sizes, seed=args.seed)
    results = {name: ev.evaluate(name, items, split_half_fad=half) for name, (items, half) in systems.items()}
    extra = {"skipped": skipped.to_json(), "reference": {"dir": args.reference_dir, "n": len(refs)},
             "backends": list(backends), "probes": [p.attribute + ":" + p.backend for p in probes]}
    paths = write_report(os.path.expanduser(args.out_dir), results,
                         {n: items for n, (items, _) in systems.items()}, highlight, extra, plots=not args.no_plots)
    from musiclm_jax.eval.report import markdown_table

    print(markdown_table(results))
    msg = f"skipped {len(skipped)} item(s)" + (": " + "; ".join(f"{n} ({r})" for n, r in skipped.items)
                                               if len(skipped) else "")
    print(msg)
    print(f"report: {paths['markdown']}, {paths['json']}, {len(paths['plots'])} PNG(s) in {args.out_dir}")
    return {"results": results, "paths": paths, "skipped": len(skipped)}
