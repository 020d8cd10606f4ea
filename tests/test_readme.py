"""Every shell command of the README runs in the suite, so a README command cannot rot.

The README's ```bash blocks are read, in order; each command must match exactly one entry of PLAN below: run it as
written, run it with shrunk flags (fewer steps, smaller corpora, shorter audio: the same code paths at test size), or
skip it with the reason why it cannot run here (a bucket, a pod, a long-lived server, or the suite itself). A new
README command fails `test_every_readme_command_is_planned` until it is planned here.

Commands run in one process, in a scratch copy of the places the README names (`/tmp/...`, `~/...`, `out/`,
`weights/`, `demo_out/`), through the same entry points the shell would use (`musiclm_jax.cli.main`,
`python -m musiclm_jax.train`, ...): the shell and a fresh interpreter per command would add ~6 s of imports each.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import soundfile as sf

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# (pattern matched against the command as written, action). Actions: "run"; ("shrink", [(regex, replacement), ...]);
# ("skip", reason). Patterns are searched in order; the first that matches is the command's entry.
PLAN = [
    (r"^make (demo|test)\b", ("skip", "make installs and runs what this suite runs (the demo command is below)")),
    (r"demo --prompt .* --duration 4", ("shrink", [(r"--duration 4", "--duration 1")])),
    (r"demo --out_dir demo_out", "run"),
    (r"data build --dataset synthcaps --config tiny --sample_rate 24000 --clip_seconds 30",
     ("shrink", [(r"--clip_seconds 30", "--clip_seconds 2 --num_scores 2")])),
    (r"data build --dataset synthcaps --config small --num_scores 80", ("shrink", [(r"--num_scores 80", "--num_scores 4")])),
    (r"data build --dataset synthcaps --config tiny  ?--data_dir ~/tfds", "run"),  # the probe and eval use it
    (r"data build --dataset synthcaps --config small --data_dir ~/tfds",
     ("shrink", [(r"--data_dir ~/tfds", "--clip_seconds 4 --num_scores 4 --data_dir ~/tfds")])),
    (r"data build --dataset synthcaps --config tiny --clip_seconds 4 --num_scores 4", "run"),
    (r"data build --dataset audio_captions", "run"),
    (r"data melody --config tiny --data_dir ~/tfds", "run"),
    (r"codec train .*--steps 2000", ("shrink", [(r"--steps 2000", "--steps 2")])),
    (r"codec (reconstruct|encode|decode|eval) --model_dir=/tmp/codec_tiny", "run"),
    (r"--clip_seconds 8 --num_scores 1000", ("shrink", [(r"--clip_seconds 8 --num_scores 1000",
                                                          "--clip_seconds 4 --num_scores 4")])),
    (r"codec train --gin_file=gin/experiments/codec_vocos\.gin",
     ("shrink", [(r"tiny_8s_n1000", "tiny_4s_n4"), (r"$", " --steps 1")])),
    (r"codec eval --model_dir out/codec_runs/vocos_long",
     ("shrink", [(r"tiny_8s_n1000", "tiny_4s_n4"), (r"--limit 64 --seconds 8", "--limit 2 --seconds 2")])),
    (r"codec reconstruct --model_dir=weights/codec_vocos", "run"),
    (r"semantic train --gin_file=gin/experiments/w2v_bert_tiny_synthetic.gin", ("shrink", [(r"--steps 300", "--steps 2")])),
    (r"semantic (fit-kmeans|tokenize|eval) --model_dir=/tmp/w2v_tiny", "run"),
    (r"semantic probe --model_dir weights/musiclm/semantic",
     ("shrink", [(r"tiny_8s_n1000", "tiny"), (r"out/quickstart/tfds", "~/tfds"), (r"--limit 200", "--limit 8")])),
    (r"mulan train .*small_5s_n80", ("shrink", [(r"small_5s_n80", "small_5s_n4"), (r"--steps 300", "--steps 2")])),
    (r"mulan eval --model_dir=/tmp/mulan_tiny", ("shrink", [(r"small_5s_n80", "small_5s_n4")])),
    (r"mulan fit-quantizer --model_dir=/tmp/mulan_tiny", ("shrink", [(r"small_5s_n80", "small_5s_n4")])),
    (r"mulan train --gin_file=gin/experiments/mulan_tiny_synthcaps_pitch\.gin",
     ("shrink", [(r"out/quickstart/tfds", "/tmp/tfds"), (r"tiny_8s_n1000", "small_5s_n4"), (r"--steps 600", "--steps 2")])),
    (r"mulan train --gin_file=gin/experiments/mulan_tiny_synthcaps_tempo\.gin",
     ("shrink", [(r"out/quickstart/tfds", "/tmp/tfds"), (r"tiny_8s_n1000", "small_5s_n4"), (r"--steps 600", "--steps 2")])),
    (r"mulan eval --model_dir=out/mulan_exp/pitch_twins",
     ("shrink", [(r"out/quickstart/tfds", "/tmp/tfds"), (r"tiny_8s_n1000", "small_5s_n4")])),
    (r"mulan embed --model_dir=/tmp/mulan_tiny", "run"),
    (r"tokenize --tasks='synthcaps_tiny_\(semantic\|coarse\|fine\)'", "run"),
    (r"generate .*--melody song\.wav .*--model_dir weights/musiclm_melody", ("shrink", [(r"--duration 8", "--duration 1")])),
    (r"melody render-bank .*--split test --limit 64 --seconds 8", ("shrink", [
        (r"tiny_8s_n1000", "tiny"), (r"out/quickstart/tfds", "~/tfds"), (r"--limit 64 --seconds 8", "--limit 6 --seconds 1")])),
    (r"eval melody --model_dir weights/musiclm_melody", ("shrink", [
        (r"tiny_8s_n1000", "tiny"), (r"out/quickstart/tfds", "~/tfds"), (r"--limit 54", "--limit 2")])),
    (r"melody render-bank --config tiny_8s_n1000", ("shrink", [(r"tiny_8s_n1000", "tiny"),
                                                             (r"out/quickstart/tfds", "~/tfds"),
                                                             (r"--limit 400", "--limit 8 --seconds 2")])),
    (r"melody train --gin_file=gin/experiments/melody_tiny_synthcaps\.gin",
     ("shrink", [(r"--steps 300", "--steps 2")])),
    (r"melody fit-quantizer --model_dir out/melody_tiny", "run"),
    (r"melody eval --model_dir out/melody_tiny", "run"),
    (r"-m musiclm_jax\.train --gin_file=gin/experiments/stage_coarse_tiny\.gin .*--gin\.ALIGNED=True",
     ("shrink", [(r"TRAIN_STEPS=40", "TRAIN_STEPS=2")])),
    (r"-m musiclm_jax\.train --gin_file=gin/experiments/stage_coarse_tiny\.gin",
     ("shrink", [(r"TRAIN_STEPS=40", "TRAIN_STEPS=2")])),
    (r"^\.venv/bin/python launch/\w+\.py .*--dry_run$", "run"),  # prints the cloud commands, runs none
    (r"launch/gpu\.py --local_processes 2 --platform cpu",
     ("skip", "tests/test_launch.py runs this launcher's two CPU processes (the same command, fewer steps)")),
    (r"benchmarks/decode\.py --configs tiny,quickstart,mid",
     ("shrink", [(r"--configs tiny,quickstart,mid --batches 1,16", "--configs quickstart --batches 1"),
                 (r"--reps 3", "--reps 1"), (r"benchmarks/results/decode_roofline\.json", "/tmp/decode_roofline.json")])),
    (r"benchmarks/accelerator\.py --budget_s 480",
     ("shrink", [(r"--budget_s 480", "--cpu_small --sections peaks,decode --out /tmp/accelerator.json")])),
    (r"gs://BUCKET", ("skip", "needs a cloud project and bucket (Dataflow / a TPU pod)")),
    (r"generate --prompt .* --model_dir weights/musiclm", ("shrink", [(r"--duration 10", "--duration 1")])),
    (r"generate --prompt .* --random_init --tiny", ("shrink", [(r"--duration 2", "--duration 0.5")])),
    (r"infer --prompts prompts\.jsonl .*--model_dir weights/musiclm", ("shrink", [(r"--duration 4", "--duration 0.5")])),
    (r"infer --prompts prompts\.jsonl .*--random_init", "run"),
    (r"eval export-synthcaps .*--out out/rl/ref_test",
     ("shrink", [(r"out/quickstart/tfds", "~/tfds"), (r"tiny_8s_n1000", "tiny"), (r"--limit 48", "--limit 2")])),
    (r"eval export-synthcaps .*--out out/rl/ref_train",
     ("shrink", [(r"out/quickstart/tfds", "~/tfds"), (r"tiny_8s_n1000", "tiny"), (r"--limit 400", "--limit 16")])),
    (r"eval export-synthcaps --data_dir out/quickstart/tfds .*--split test",  # 8 clips: infer generates each
     ("shrink", [(r"out/quickstart/tfds", "~/tfds"), (r"small_5s_n300", "tiny"),
                 (r"--split test", "--split test --limit 8")])),
    (r"eval export-synthcaps --data_dir out/quickstart/tfds",
     ("shrink", [(r"out/quickstart/tfds", "~/tfds"), (r"small_5s_n300", "tiny")])),
    (r"eval fit-probe", "run"),
    (r"eval export-synthcaps --data_dir out/tfds --config tiny_8s_n300 --split train",
     ("shrink", [(r"out/tfds", "~/tfds"), (r"tiny_8s_n300", "tiny"), (r"--split train", "--split train --limit 16")])),
    (r"finetune distill-data ",
     ("shrink", [(r"--out out/distill/d\.npz", "--out out/distill/d.npz --seconds 1 --batch_size 8")])),
    (r"finetune distill ", ("shrink", [(r"--steps 300", "--steps 2 --batch_size 8 --no_progress")])),  # 8: the fake devices
    (r"generate --prompt .* --model_dir out/distill/out/musiclm", ("shrink", [(r"--duration 4", "--duration 1")])),
    (r"finetune score --audio_dir out/gen ", "run"),
    (r"finetune compare --models base=weights/musiclm",
     ("shrink", [(r"base_unguided=weights/musiclm:unguided ", ""),
                 (r"--out out/rl/compare\.json", "--out out/rl/compare.json --seconds 1 --rewards pulse")])),
    (r"finetune rl --model_dir weights/musiclm",   # batch 8: the fake devices
     ("shrink", [(r"--rounds 8", "--rounds 1 --prompts_per_round 2 --samples_per_prompt 4 --steps_per_round 1 "
                                 "--batch_size 8 --seconds 1")])),
    (r"^\.venv/bin/musiclm-jax merge --a weights/musiclm", "run"),
    (r"finetune curve --a out/distill/out/musiclm",
     ("shrink", [(r"--lams 0 0\.25 0\.5 0\.75 1", "--lams 0 1"), (r"base_unguided=weights/musiclm:unguided", ""),
                 (r"--out_dir out/curve", "--out_dir out/curve --seconds 1 --samples_per_prompt 2 --batch_size 8")])),
    (r"infer --prompts out/eval/ref/infer_prompts\.jsonl", ("shrink", [(r"--duration 5", "--duration 3")])),
    (r"eval --audio_dir out/eval/gen", "run"),
    (r"eval chain --model_dir weights/musiclm .*--conditioning", ("shrink", [(r"--limit 32", "--limit 2")])),
    (r"eval chain --model_dir weights/musiclm", ("shrink", [(r"--limit 32 --batch_size 16",
                                                            "--limit 2 --batch_size 2 --duration 1 --rows codec fine text "
                                                            "--bootstrap 20")])),
    (r"-m musiclm_jax\.train --gin_file=gin/experiments/lm_tiny_synthetic\.gin",
     ("shrink", [(r"$", " --gin.TRAIN_STEPS=2")])),
    (r"^tensorboard ", ("skip", "a long-lived server (its logs are written by the training above)")),
    (r"-m musiclm_jax\.infer ", "run"),
]


def readme_commands() -> list[str]:
    """The README's bash commands, in order: continuation lines joined, comments dropped."""
    commands, block = [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```bash" and block is None else None
            continue
        if block is None:
            continue
        text = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1].rstrip() + " " + text.strip()
        elif text.strip():
            commands.append(text.strip())
    return commands


def plan_of(command: str):
    matches = [action for pattern, action in PLAN if re.search(pattern, command)]
    return matches[0] if matches else None


def test_every_readme_command_is_planned():
    commands = readme_commands()
    assert len(commands) > 30, "the README's bash blocks were not found"
    unplanned = [c for c in commands if plan_of(c) is None]
    assert not unplanned, f"README commands with no entry in tests/test_readme.py PLAN: {unplanned}"
    for c in commands:
        action = plan_of(c)
        if isinstance(action, tuple) and action[0] == "shrink":  # every shrink must change something
            assert _shrunk(c, action[1]) != c, f"the shrink of {c!r} changes nothing: the README moved on"


def _shrunk(command: str, subs) -> str:
    for pattern, repl in subs:
        command = re.sub(pattern, repl, command, count=1)
    return command


def _localise(command: str, work: pathlib.Path) -> str:
    places = {"~/": f"{work}/home/", "/tmp/": f"{work}/tmp/"}
    return re.sub(r"(?<![\w/.])(~/|/tmp/)", lambda m: places[m.group(1)], command)


def _run(argv: list[str]) -> int:
    """One command line, through the entry point its shell form names."""
    gin.clear_config()
    if argv[0].endswith("musiclm-jax") and argv[1] == "tokenize":
        # A Beam job over SeqIO's process-wide task registry and TFDS builder caches, which earlier tests in this
        # process have filled: it runs in its own interpreter, as from the shell.
        done = subprocess.run([sys.executable, "-m", "musiclm_jax.cli", *argv[1:]], capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    if argv[0].endswith("musiclm-jax"):
        from musiclm_jax import cli
        return cli.main(argv[1:])
    if argv[0].endswith("python") and argv[1].startswith(("launch/", "benchmarks/")):  # a script: its own interpreter
        done = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    assert argv[0].endswith("python") and argv[1] == "-m", argv
    module, rest = argv[2], argv[3:]
    if module == "musiclm_jax.train":
        from musiclm_jax.train.__main__ import main
    elif module == "musiclm_jax.infer":
        from musiclm_jax.infer import main
    else:
        raise AssertionError(f"no in-process entry for python -m {module}: add it to tests/test_readme.py")
    return main(rest)


def _prepare(work: pathlib.Path) -> None:
    """The files the README assumes a reader has: a song, a folder of music, a prompts file, the shipped weights."""
    (work / "tmp").mkdir(parents=True)
    (work / "home").mkdir()
    shutil.copytree(ROOT / "weights", work / "weights", symlinks=True)  # a copy: no README command may dirty the real weights
    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    tone = lambda f: (0.3 * np.sin(2 * np.pi * f * t) * np.minimum(1, 20 * t)).astype(np.float32)  # noqa: E731
    sf.write(work / "song.wav", tone(220.0), rate)
    for folder in ("my_music", "home/musiccaps"):
        (work / folder).mkdir(parents=True)
        for i, f in enumerate((261.6, 329.6, 392.0)):
            sf.write(work / folder / f"clip{i}.wav", tone(f), rate)
    lines = [{"prompt": "a calm piano waltz", "id": "waltz", "seed": 7}, "upbeat jazz with drums",
             {"prompt": "sad violin", "duration_s": 0.5}, {"id": "no-prompt"}]
    (work / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    _prepare(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work / "home"))
    ran, skipped, timings = [], [], []
    for command in readme_commands():
        action = plan_of(command)
        if isinstance(action, tuple) and action[0] == "skip":
            skipped.append(command)
            continue
        if command in ran:  # the README repeats a command (e.g. the demo that makes clips to work on): done already
            continue
        line = _shrunk(command, action[1]) if isinstance(action, tuple) else command
        line = _localise(line, work)
        env = {}
        argv = shlex.split(line)
        while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
            key, value = argv.pop(0).split("=", 1)
            env[key] = value
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        start = time.perf_counter()
        try:
            code = _run(argv)
        except SystemExit as e:  # argparse and infer exit this way
            code = e.code
        timings.append((round(time.perf_counter() - start, 1), command[:100]))
        out = capsys.readouterr()
        assert code in (0, None), f"README command failed ({code}): {line}\n{out.err[-2000:]}\n{out.out[-2000:]}"
        ran.append(command)
    with capsys.disabled():  # where the time goes (pytest -s shows it)
        print("\nREADME command seconds:", *sorted(timings, reverse=True), sep="\n  ")
    assert len(ran) >= 28 and all(plan_of(c)[0] == "skip" for c in skipped)
    # what the commands promise is there
    assert (work / "song.wav").exists() and (work / "demo_out" / "generated.wav").exists()
    assert (work / "out" / "gen" / "results.jsonl").exists()
    assert (work / "out" / "eval" / "report").is_dir()
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(work / "weights") == files(ROOT / "weights"), "a README command wrote into weights/"
