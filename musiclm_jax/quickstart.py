"""`musiclm-jax quickstart` (`make quickstart`): the one recipe that trains a small, complete MusicLM on this CPU.

Steps, in order, each a subprocess of the existing commands (so each starts with clean gin state and frees its
memory), each logged to `<work_dir>/logs/<step>.log`:

    data       render SynthCaps `tiny` with 1,000 scores of 8 s clips (2,000 clips in two timbres; ~20 min)
    mulan      tiny MuLan (frozen pretrained MiniLM text tower, small audio ResNet) + its RVQ (4 x 16)
    semantic   tiny w2v-BERT, then k-means (64 clusters) on its features
    codec      the frame-rate codec (STFT encoder + Vocos decoder, 8 x 1024 codes at 50 Hz; about an hour)
    tokenize   the SynthCaps corpus through the Beam token cache with the three trained tokenizers
    stage_semantic / stage_coarse / stage_fine   the three stage LMs (d=192, 6 layers) on their cached SeqIO
               tasks, on the codec's first 4 levels (2 coarse + 2 fine)
    (the shipped `full` recipe: MuLan with a tempogram branch, w2v-BERT small + chroma k-means, a tempo- and
    key-conditioned semantic stage and a time-aligned, tempo- and key-conditioned coarse stage; `--recipe melody` is
    the `full` recipe with the melody-conditioned semantic stage of weights/musiclm_melody; `key`, `tempo` and
    `plain` are the systems shipped before; see `Recipe`)
    export     one `MusicLM.from_pretrained` directory: inference-only checkpoints (no optimizer state; the
               frozen MiniLM text tower is left out and read from its package at load time) + musiclm.json

A finished step leaves `<work_dir>/done/<step>.json` (command, wall seconds) and is skipped on the next run; an
interrupted training step resumes from its last checkpoint. So the recipe can be stopped at any time and run again,
in the same or a later session. `--steps` reruns chosen steps, `--dry_run` prints the commands.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

SYNTHCAPS_CONFIG = "tiny_8s_n1000"   # tasks/musiclm_tasks.py QUICKSTART_TFDS names the same corpus
STEPS = ("data", "mulan", "semantic", "kmeans", "codec", "tokenize", "stage_semantic", "stage_coarse", "stage_fine",
         "export")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Train steps and configs per part (RECIPES). `full` is the shipped recipe; `smoke` checks the whole chain in
    minutes; `melody` is `full` with the melody-conditioned semantic stage; `tempo` is the system shipped before (no
    key), `plain` the one before it; `adherence` is `full` without
    tempo or key conditioning, with the shipped codec and fine stage (which reads coarse codes only) copied instead
    of retrained."""

    num_scores: int = 1000
    clip_seconds: float = 8.0
    mulan_steps: int = 600
    mulan_gin: str = "gin/experiments/mulan_tiny_synthcaps.gin"
    mulan_bindings: tuple[str, ...] = ()
    w2v_steps: int = 300
    w2v_gin: str = "gin/experiments/w2v_bert_tiny_synthcaps.gin"
    kmeans_clusters: int = 64
    kmeans_chroma_weight: float = 0.0   # > 0: the clusters also see each frame's chroma (semantic fit-kmeans)
    codec_steps: int = 6051       # of a 7,000-step cosine schedule: the shipped codec stopped at the hour
    codec_schedule_steps: int = 7000
    stage_steps: tuple[int, int, int] = (1200, 3000, 800)   # semantic, coarse, fine (coarse: 1,000 stopped short)
    aligned_coarse: bool = False  # the coarse stage reads its semantic tokens in time (gin ALIGNED)
    speed_semantic: bool = False  # the semantic stage trains on the speed-augmented task (keys / tempi +-2 semitones)
    beat_semantic: bool = False   # the semantic stage is told the stated tempo (tempo tokens + beat phases)
    key_stages: bool = False      # the semantic and coarse stages are told the stated key (needs speed + beat semantic)
    pitch_melody: bool = False    # the semantic stage also reads the lead line's pitch-class melody (needs key_stages)
    beat_coarse: bool = False     # the coarse stage is told the stated tempo too (needs key_stages)
    reuse: tuple[str, ...] = ()   # parts copied from `reuse_from` instead of trained (e.g. codec, stage_fine)
    reuse_from: str = "weights/musiclm"


# The adherence recipe's tokenizers and stages (issue 16): a MuLan that hears tempo and key (tempogram branch,
# same-score twins) with its quantizer fitted on audio + text, w2v-BERT small + chroma k-means, a time-aligned
# coarse stage.
_ADHERENCE = dict(mulan_gin="gin/experiments/mulan_tiny_synthcaps_tempo.gin",
                  mulan_bindings=("mulan_dataset.twins = 0.5", "train_mulan.quantizer_fit_on = 'audio+text'"),
                  w2v_steps=1500, w2v_gin="gin/experiments/w2v_bert_small_synthcaps.gin", kmeans_chroma_weight=1.5,
                  stage_steps=(1200, 2000, 800), aligned_coarse=True)
RECIPES = {
    # The shipped weights: the adherence tokenizers and stages, the semantic stage told the stated tempo and
    # trained on the speed-augmented clips, the semantic and coarse stages told the stated key, the coarse stage
    # told the tempo too.
    "full": Recipe(**_ADHERENCE, beat_semantic=True, speed_semantic=True, key_stages=True, beat_coarse=True),
    # The system shipped before it: the coarse stage not told the tempo.
    "key": Recipe(**_ADHERENCE, beat_semantic=True, speed_semantic=True, key_stages=True),
    # The shipped melody model (weights/musiclm_melody; pass --out_dir): the same, the semantic stage also told the
    # lead line's pitch-class melody.
    "melody": Recipe(**_ADHERENCE, beat_semantic=True, speed_semantic=True, key_stages=True, pitch_melody=True,
                     beat_coarse=True),
    # The system shipped before: without the key.
    "tempo": Recipe(**_ADHERENCE, beat_semantic=True, speed_semantic=True),
    # The system shipped before (tiny MuLan / w2v-BERT, plain stages): no tempo or key adherence.
    "plain": Recipe(),
    "smoke": Recipe(mulan_steps=4, w2v_steps=4, kmeans_clusters=64, codec_steps=4, stage_steps=(4, 4, 4)),
    # The candidate without tempo conditioning, codec and fine stage copied from the shipped weights.
    "adherence": Recipe(**_ADHERENCE, reuse=("codec", "stage_fine")),
}


def _copy(src: str, dst: str) -> list[str]:
    """A step that copies a shipped part into the work dir (safe to rerun)."""
    code = "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"
    return [sys.executable, "-c", code, src, dst]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "musiclm_jax.cli", *args]


def commands(work_dir: str, out_dir: str, recipe: Recipe) -> dict[str, list[str]]:
    """The command of every step (paths as given: run from the repository root, where gin/ lives)."""
    w = work_dir.rstrip("/")
    tfds, data = f"{w}/tfds", f"--data_dir={w}/tfds"
    tokenizers = [f"tasks.preprocessors.tokenizer_spec.{part} = '{w}/{part}'" for part in ("codec", "semantic", "mulan")]
    cmds = {
        "data": _cli("data", "build", "--dataset", "synthcaps", "--config", "tiny", "--num_scores",
                     str(recipe.num_scores), "--clip_seconds", f"{recipe.clip_seconds:g}", "--data_dir", tfds,
                     "--num_workers", "2"),
        "mulan": _cli("mulan", "train", f"--gin_file={recipe.mulan_gin}", f"--model_dir={w}/mulan",
                      data, f"--gin_bindings=SYNTHCAPS = '{SYNTHCAPS_CONFIG}'",
                      f"--gin_bindings=TRAIN_STEPS = {recipe.mulan_steps}",
                      *[f"--gin_bindings={b}" for b in recipe.mulan_bindings]),
        "semantic": _cli("semantic", "train", f"--gin_file={recipe.w2v_gin}",
                         f"--model_dir={w}/semantic", f"--gin_bindings=SYNTHCAPS = '{SYNTHCAPS_CONFIG}'",
                         f"--gin_bindings=synthcaps_audio.data_dir = '{tfds}'",
                         f"--gin_bindings=TRAIN_STEPS = {recipe.w2v_steps}"),
        "kmeans": _cli("semantic", "fit-kmeans", f"--model_dir={w}/semantic", f"--synthcaps={SYNTHCAPS_CONFIG}", data,
                       f"--num_clusters={recipe.kmeans_clusters}", "--max_frames=50000", "--num_steps=100",
                       *([f"--chroma_weight={recipe.kmeans_chroma_weight:g}"] if recipe.kmeans_chroma_weight else [])),
        "codec": _cli("codec", "train", "--gin_file=gin/experiments/codec_vocos.gin", f"--model_dir={w}/codec",
                      f"--synthcaps={SYNTHCAPS_CONFIG}", data, f"--steps={recipe.codec_steps}",
                      f"--gin_bindings=CodecFamily.total_steps = {recipe.codec_schedule_steps}"),
        "tokenize": _cli("tokenize", "--tasks=synthcaps_quickstart_(?!speed_).*"
                         + (",synthcaps_quickstart_speed_semantic" if recipe.speed_semantic else "")
                         + (",synthcaps_quickstart_speed_beat_semantic" if recipe.speed_semantic
                            and recipe.beat_semantic else "")
                         + (",synthcaps_quickstart_speed_key_semantic" if recipe.key_stages else "")
                         + (",synthcaps_quickstart_speed_pitch_semantic" if recipe.pitch_melody else ""),
                         f"--output_cache_dir={w}/cache",
                         f"--tfds_data_dir={tfds}", "--gin_file=gin/runs/tokenize_quickstart.gin", "--num_workers=1",
                         *[f"--gin_bindings={b}" for b in tokenizers],
                         # the lead lines' pitch-class melody (from the scores' notes: no audio pass) in every cache
                         *(["--gin_bindings=tasks.preprocessors.tokenizer_spec.melody = 'pitch'"]
                           if recipe.pitch_melody else [])),
    }
    for stage, steps in zip(("semantic", "coarse", "fine"), recipe.stage_steps):
        cmds[f"stage_{stage}"] = [
            sys.executable, "-m", "musiclm_jax.train",
            f"--gin_file=gin/experiments/stage_{stage}_quickstart{_variant(stage, recipe)}.gin",
            f"--gin.MODEL_DIR='{w}/stage_{stage}'", f"--gin.TRAIN_STEPS={steps}",
            f"--gin.stage_task_dataset.cache_dirs=('{w}/cache',)",
            *[f"--gin.{b.replace(' ', '')}" for b in tokenizers],
            *(["--gin.ALIGNED=True"] if stage == "coarse" and recipe.aligned_coarse else [])]
    for part in recipe.reuse:
        if part not in cmds:
            raise ValueError(f"recipe reuses {part!r}, which is not a part of the recipe: use one of {list(cmds)}")
        cmds[part] = _copy(f"{recipe.reuse_from.rstrip('/')}/{part}", f"{w}/{part}")
    cmds["export"] = [sys.executable, "-m", "musiclm_jax.export", f"--work_dir={w}", f"--out_dir={out_dir}"]
    return cmds


def _variant(stage: str, recipe: Recipe) -> str:
    """A stage's gin experiment suffix: semantic _speed, _beat, _speed_beat, _speed_key or _speed_pitch; coarse
    _key or _key_beat."""
    if stage == "coarse":
        if recipe.beat_coarse and not recipe.key_stages:
            raise ValueError("Recipe.beat_coarse needs key_stages (the coarse tempo experiment builds on the key-"
                             "conditioned coarse stage)")
        return ("_key" if recipe.key_stages else "") + ("_beat" if recipe.beat_coarse else "")
    if stage != "semantic":
        return ""
    if recipe.pitch_melody and not recipe.key_stages:
        raise ValueError("Recipe.pitch_melody needs key_stages (the pitch-melody experiment builds on the key-"
                         "conditioned semantic stage)")
    if recipe.key_stages:
        if not (recipe.speed_semantic and recipe.beat_semantic):
            raise ValueError("Recipe.key_stages needs speed_semantic and beat_semantic (the key experiment builds on "
                             "the speed-augmented, tempo-conditioned semantic stage)")
        return "_speed_pitch" if recipe.pitch_melody else "_speed_key"
    return ("_speed" if recipe.speed_semantic else "") + ("_beat" if recipe.beat_semantic else "")


def run(work_dir: str, out_dir: str, recipe: Recipe, *, only: list[str] | None = None, dry_run: bool = False,
        commands_fn=commands) -> dict[str, dict]:
    """Runs the steps not yet done (or `only` these, done or not); returns {step: record}. Stops at the first
    failing step with one line naming it and its log."""
    cmds = commands_fn(work_dir, out_dir, recipe)
    unknown = sorted(set(only or ()) - set(cmds))
    if unknown:
        raise ValueError(f"unknown quickstart step(s) {unknown}: choose from {list(cmds)}")
    if not dry_run:  # a dry run prints the commands and leaves the disk as it found it
        os.makedirs(os.path.join(work_dir, "done"), exist_ok=True)
        os.makedirs(os.path.join(work_dir, "logs"), exist_ok=True)
    records = {}
    for i, (step, cmd) in enumerate(cmds.items()):
        marker = os.path.join(work_dir, "done", f"{step}.json")
        if only is not None and step not in only:
            continue
        if only is None and os.path.exists(marker):
            with open(marker) as f:
                records[step] = {**json.load(f), "skipped": True}
            print(f"[{i + 1}/{len(cmds)}] {step}: done earlier ({records[step]['seconds']:.0f} s), skipped")
            continue
        line = shlex.join(cmd)
        if dry_run:
            print(line)
            continue
        log_path = os.path.join(work_dir, "logs", f"{step}.log")
        print(f"[{i + 1}/{len(cmds)}] {step}: {line}\n    log: {log_path}", flush=True)
        start = time.time()
        with open(log_path, "a") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.time() - start
        if code != 0:
            raise RuntimeError(f"quickstart step {step!r} failed (exit {code}) after {seconds:.0f} s: see {log_path}")
        records[step] = {"command": line, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(marker + ".tmp", "w") as f:
            json.dump(records[step], f, indent=1)
        os.replace(marker + ".tmp", marker)
        print(f"    {step} done in {seconds / 60:.1f} min", flush=True)
    return records


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work_dir", default="out/quickstart", help="data, checkpoints, logs and done-markers")
    p.add_argument("--out_dir", default="weights/musiclm", help="the exported MusicLM.from_pretrained directory")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="full")
    p.add_argument("--steps", nargs="+", default=None, metavar="STEP", help=f"run only these (of {', '.join(STEPS)})")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")


def register(subparsers) -> None:
    q = subparsers.add_parser("quickstart", help="train the small complete MusicLM (resumable), export its weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(q)
    q.set_defaults(func=command)


def command(args: argparse.Namespace) -> dict:
    if not os.path.isdir("gin"):
        raise ValueError("run quickstart from the repository root (where gin/ is)")
    try:
        records = run(args.work_dir, args.out_dir, RECIPES[args.recipe], only=args.steps, dry_run=args.dry_run)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    if not args.dry_run:
        total = sum(r["seconds"] for r in records.values())
        print(f"quickstart: {len(records)} steps, {total / 60:.1f} min of training in all; model in {args.out_dir}")
    return records
