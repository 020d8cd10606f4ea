"""The quickstart recipe: every step's command is well formed; the runner skips finished steps, resumes, stops
with the failing step's log named; export refuses an incomplete work dir. (The trained result is tested by
tests/test_weights.py on the shipped weights.)"""
import json
import os
import sys

import pytest

from musiclm_jax import export, quickstart
from musiclm_jax.train import gin_utils


def test_commands_cover_every_step_and_name_existing_gin_files():
    cmds = quickstart.commands("out/qs", "weights/x", quickstart.RECIPES["full"])
    assert tuple(cmds) == quickstart.STEPS
    for step, cmd in cmds.items():
        for arg in cmd:
            if arg.startswith("--gin_file="):
                assert (gin_utils.GIN_DIR / arg.split("=", 1)[1].removeprefix("gin/")).exists(), (step, arg)
    assert "--model_dir=out/qs/codec" in cmds["codec"] and "--out_dir=weights/x" in cmds["export"]
    assert any("tokenizer_spec.mulan='out/qs/mulan'" in a for a in cmds["stage_coarse"])


def _fake_commands(work_dir, out_dir, recipe, fail=()):
    # Each step appends its name to a file, so the test sees which steps ran and in which order.
    def step(name):
        code = f"open({os.path.join(work_dir, 'ran.txt')!r}, 'a').write({name!r} + '\\n')"
        if name in fail:
            code += "; raise SystemExit(3)"
        return [sys.executable, "-c", code]
    return {name: step(name) for name in ("data", "train", "export")}


def _ran(work_dir):
    with open(os.path.join(work_dir, "ran.txt")) as f:
        return f.read().split()


def test_runner_skips_done_steps_resumes_after_failure_and_reruns_on_request(tmp_path, capsys):
    w = str(tmp_path)
    recipe = quickstart.RECIPES["smoke"]
    with pytest.raises(RuntimeError, match=r"step 'train' failed \(exit 3\).*logs/train.log"):
        quickstart.run(w, "o", recipe, commands_fn=lambda *a: _fake_commands(*a, fail=("train",)))
    assert _ran(w) == ["data", "train"]
    assert os.path.exists(tmp_path / "done" / "data.json") and not os.path.exists(tmp_path / "done" / "train.json")
    records = quickstart.run(w, "o", recipe, commands_fn=_fake_commands)   # the rerun: data is skipped
    assert _ran(w) == ["data", "train", "train", "export"]
    assert records["data"]["skipped"] and not records["export"].get("skipped")
    assert "done earlier" in capsys.readouterr().out
    quickstart.run(w, "o", recipe, only=["export"], commands_fn=_fake_commands)   # explicit rerun of a done step
    assert _ran(w)[-1] == "export"
    with open(tmp_path / "done" / "export.json") as f:
        assert json.load(f)["seconds"] >= 0
    with pytest.raises(ValueError, match="unknown quickstart step"):
        quickstart.run(w, "o", recipe, only=["nope"], commands_fn=_fake_commands)


def test_dry_run_prints_and_runs_nothing(tmp_path, capsys):
    quickstart.run(str(tmp_path), "o", quickstart.RECIPES["full"], dry_run=True)
    out = capsys.readouterr().out
    assert "musiclm_jax.cli codec train" in out and "musiclm_jax.export" in out
    assert not (tmp_path / "done").exists()  # a dry run creates nothing


def test_cli_outside_the_repository_root_and_export_of_an_incomplete_work_dir(tmp_path, monkeypatch, capsys):
    from musiclm_jax import cli

    with pytest.raises(ValueError, match="lacks trained"):
        export.export(str(tmp_path), str(tmp_path / "out"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["quickstart", "--dry_run"]) == 2
    assert "repository root" in capsys.readouterr().err


def test_a_training_stopped_by_sigterm_exits_nonzero(monkeypatch, capsys):
    # The trainer saves and returns on SIGTERM; the command must not exit 0, or the runner would mark the step done.
    from musiclm_jax import cli

    monkeypatch.setattr(quickstart, "command", lambda args: {"preempted": True, "step": 3})
    assert cli.main(["quickstart"]) == 143
    assert "resume" in capsys.readouterr().err


def test_adherence_recipe_swaps_configs_and_copies_the_shipped_codec_and_fine_stage(tmp_path):
    import subprocess

    r = quickstart.RECIPES["adherence"]
    cmds = quickstart.commands("out/adh", "weights/y", r)
    assert tuple(cmds) == quickstart.STEPS
    for step, cmd in cmds.items():   # every gin file it names exists
        for arg in cmd:
            if arg.startswith("--gin_file="):
                assert (gin_utils.GIN_DIR / arg.split("=", 1)[1].removeprefix("gin/")).exists(), (step, arg)
    assert "--gin_file=gin/experiments/mulan_tiny_synthcaps_tempo.gin" in cmds["mulan"]
    assert "--gin_bindings=mulan_dataset.twins = 0.5" in cmds["mulan"]
    assert "--gin_bindings=train_mulan.quantizer_fit_on = 'audio+text'" in cmds["mulan"]
    assert "--chroma_weight=1.5" in cmds["kmeans"] and "--gin.ALIGNED=True" in cmds["stage_coarse"]
    assert "--gin.ALIGNED=True" not in cmds["stage_semantic"]
    assert cmds["codec"][-2:] == ["weights/musiclm/codec", "out/adh/codec"]
    assert cmds["stage_fine"][-2:] == ["weights/musiclm/stage_fine", "out/adh/stage_fine"]
    plain = quickstart.commands("out/adh", "weights/y", quickstart.RECIPES["plain"])
    assert not any("chroma_weight" in a or "ALIGNED" in a for cmd in plain.values() for a in cmd)
    # The shipped recipe: the same tokenizers, the semantic stage told the tempo, both stages the key, every part
    # trained (nothing copied).
    full = quickstart.commands("out/adh", "weights/y", quickstart.RECIPES["full"])
    assert "--chroma_weight=1.5" in full["kmeans"] and "--gin.ALIGNED=True" in full["stage_coarse"]
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_speed_key.gin" in full["stage_semantic"]
    assert "--model_dir=out/adh/codec" in full["codec"] and "musiclm_jax.train" in full["stage_fine"]
    import dataclasses
    with pytest.raises(ValueError, match="not a part of the recipe"):
        quickstart.commands("out/adh", "weights/y", dataclasses.replace(r, reuse=("vocoder",)))
    shipped = tmp_path / "shipped" / "codec" / "checkpoints"
    shipped.mkdir(parents=True)
    (shipped / "x").write_text("1")
    copy = quickstart.commands(str(tmp_path / "w"), "unused", dataclasses.replace(r, reuse_from=str(tmp_path / "shipped")))
    for _ in range(2):   # a rerun (after a stop) copies again over what is there
        subprocess.run(copy["codec"], check=True)
    assert (tmp_path / "w" / "codec" / "checkpoints" / "x").read_text() == "1"


def test_speed_semantic_recipe_tokenizes_and_trains_on_the_augmented_task():
    import dataclasses

    from musiclm_jax.tasks import cache
    import musiclm_jax.tasks.musiclm_tasks  # noqa: F401 -- registers the tasks

    def tasks(recipe):
        flag = next(a for a in quickstart.commands("out/q", "w", recipe)["tokenize"] if a.startswith("--tasks="))
        return cache.select_tasks(flag.removeprefix("--tasks=").split(","))

    plain = tasks(quickstart.RECIPES["plain"])
    assert "synthcaps_quickstart_semantic" in plain and not any("speed" in t for t in plain)
    r = dataclasses.replace(quickstart.RECIPES["adherence"], speed_semantic=True)
    assert set(tasks(r)) - set(plain) == {"synthcaps_quickstart_speed_semantic"}
    cmds = quickstart.commands("out/q", "w", r)
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_speed.gin" in cmds["stage_semantic"]
    assert "--gin_file=gin/experiments/stage_coarse_quickstart.gin" in cmds["stage_coarse"]


def test_beat_semantic_recipe_trains_the_tempo_conditioned_stage_from_the_plain_tokenization():
    import dataclasses

    from musiclm_jax.tasks import cache
    import musiclm_jax.tasks.musiclm_tasks  # noqa: F401 -- registers the tasks

    r = dataclasses.replace(quickstart.RECIPES["adherence"], beat_semantic=True)
    cmds = quickstart.commands("out/q", "w", r)
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_beat.gin" in cmds["stage_semantic"]
    flag = next(a for a in cmds["tokenize"] if a.startswith("--tasks="))
    beat = "synthcaps_quickstart_beat_semantic"
    assert beat in cache.select_tasks(flag.removeprefix("--tasks=").split(","))
    # It shares the plain task's pre-cache part: one tokenization writes both caches.
    import seqio

    assert cache._precache_key(seqio.TaskRegistry.get(beat)) == cache._precache_key(
        seqio.TaskRegistry.get("synthcaps_quickstart_semantic"))
    both = quickstart.commands("out/q", "w", dataclasses.replace(r, speed_semantic=True))
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_speed_beat.gin" in both["stage_semantic"]
    flag = next(a for a in both["tokenize"] if a.startswith("--tasks="))
    assert {"synthcaps_quickstart_speed_semantic", "synthcaps_quickstart_speed_beat_semantic"} <= set(
        cache.select_tasks(flag.removeprefix("--tasks=").split(",")))


def test_key_recipe_trains_both_key_conditioned_stages_from_the_plain_and_speed_tokenizations():
    import dataclasses

    import seqio

    from musiclm_jax.tasks import cache
    import musiclm_jax.tasks.musiclm_tasks  # noqa: F401 -- registers the tasks

    r = quickstart.RECIPES["key"]
    assert r.key_stages and r.speed_semantic and r.beat_semantic and not r.beat_coarse
    cmds = quickstart.commands("out/q", "w", r)
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_speed_key.gin" in cmds["stage_semantic"]
    assert "--gin_file=gin/experiments/stage_coarse_quickstart_key.gin" in cmds["stage_coarse"]
    flag = next(a for a in cmds["tokenize"] if a.startswith("--tasks="))
    tasks = cache.select_tasks(flag.removeprefix("--tasks=").split(","))
    assert {"synthcaps_quickstart_key_coarse", "synthcaps_quickstart_speed_key_semantic"} <= set(tasks)
    # The shipped recipe also tells the coarse stage the tempo; its task shares the plain coarse tokenization.
    full = quickstart.commands("out/q", "w", quickstart.RECIPES["full"])
    assert "--gin_file=gin/experiments/stage_coarse_quickstart_key_beat.gin" in full["stage_coarse"]
    assert "synthcaps_quickstart_coarse_beat_coarse" in cache.select_tasks(
        next(a for a in full["tokenize"] if a.startswith("--tasks=")).removeprefix("--tasks=").split(","))
    with pytest.raises(ValueError, match="beat_coarse needs key_stages"):
        quickstart.commands("out/q", "w", dataclasses.replace(quickstart.RECIPES["tempo"], beat_coarse=True))
    for task, plain in (("synthcaps_quickstart_key_coarse", "synthcaps_quickstart_coarse"),
                        ("synthcaps_quickstart_coarse_beat_coarse", "synthcaps_quickstart_coarse"),
                        ("synthcaps_quickstart_speed_key_semantic", "synthcaps_quickstart_speed_semantic")):
        assert cache._precache_key(seqio.TaskRegistry.get(task)) == cache._precache_key(seqio.TaskRegistry.get(plain))
    # The tempo-only system shipped before stays reproducible.
    tempo = quickstart.commands("out/q", "w", quickstart.RECIPES["tempo"])
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_speed_beat.gin" in tempo["stage_semantic"]
    assert "--gin_file=gin/experiments/stage_coarse_quickstart.gin" in tempo["stage_coarse"]
    with pytest.raises(ValueError, match="key_stages needs speed_semantic and beat_semantic"):
        quickstart.commands("out/q", "w", dataclasses.replace(quickstart.RECIPES["adherence"], key_stages=True))


def test_pitch_melody_recipe_adds_the_melody_to_the_speed_tokenization_and_trains_the_melody_stage():
    import dataclasses

    import seqio

    from musiclm_jax.tasks import cache
    import musiclm_jax.tasks.musiclm_tasks  # noqa: F401 -- registers the tasks

    r = quickstart.RECIPES["melody"]
    assert r.pitch_melody and r.key_stages
    cmds = quickstart.commands("out/q", "w", r)
    assert "--gin_file=gin/experiments/stage_semantic_quickstart_speed_pitch.gin" in cmds["stage_semantic"]
    assert "--gin_bindings=tasks.preprocessors.tokenizer_spec.melody = 'pitch'" in cmds["tokenize"]
    assert not any("melody" in a for a in quickstart.commands("out/q", "w", quickstart.RECIPES["full"])["tokenize"])
    flag = next(a for a in cmds["tokenize"] if a.startswith("--tasks="))
    tasks = cache.select_tasks(flag.removeprefix("--tasks=").split(","))
    assert {"synthcaps_quickstart_speed_pitch_semantic", "synthcaps_quickstart_pitch_semantic"} <= set(tasks)
    # One speed tokenization writes the pitch task's cache too (the melody comes from the notes, not the audio).
    assert cache._precache_key(seqio.TaskRegistry.get("synthcaps_quickstart_speed_pitch_semantic")) == \
        cache._precache_key(seqio.TaskRegistry.get("synthcaps_quickstart_speed_semantic"))
    with pytest.raises(ValueError, match="pitch_melody needs key_stages"):
        quickstart.commands("out/q", "w", dataclasses.replace(quickstart.RECIPES["tempo"], pitch_melody=True))
