"""Bad input to the semantic / mulan / eval / tokenize / quickstart commands ends in one line (exit 2) or is skipped,
counted and named; batch commands that produce nothing exit non-zero; short trainings fit their warmup (issue 20).

Models are stand-ins (monkeypatched `from_checkpoint`) where the defect is in the command, not the model: these
tests check what the commands do with bad files, texts and arguments, in seconds.
"""
import argparse
import json
import os

import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import cli

SR = 16000


def _wav(path, seconds=1.0, freq=440.0, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return str(path)


def _broken(path):
    path.write_bytes(b"RIFF0000WAVEjunk")
    return str(path)


def _run(capsys, argv):
    """cli.main(argv) -> (exit code, stdout, stderr)."""
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err, *needles):
    lines = [ln for ln in err.splitlines() if ln.startswith("musiclm-jax: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


class FakeSemanticTokenizer:
    fingerprint = "fake"

    def tokens(self, wave, sr):
        return np.zeros((1, max(1, len(wave) * 25 // sr)), np.int32)

    def describe(self):
        return {"w2v_bert_fingerprint": self.fingerprint}


class FakeMuLan:
    def embed_text(self, texts):
        for t in texts:
            t.encode("utf-8")  # the real text tokenizer fails (TypeError) deeper inside on such text
        return np.ones((len(texts), 4), np.float32)

    def embed_audio(self, wave, sr):
        return np.full(4, float(np.mean(np.abs(wave))), np.float32)


@pytest.fixture
def fake_semantic(monkeypatch):
    from musiclm_jax.semantic.api import SemanticTokenizer

    monkeypatch.setattr(SemanticTokenizer, "from_checkpoint", classmethod(lambda cls, *a, **k: FakeSemanticTokenizer()))


@pytest.fixture
def fake_mulan(monkeypatch):
    from musiclm_jax.mulan.api import MuLan

    monkeypatch.setattr(MuLan, "from_checkpoint", classmethod(lambda cls, *a, **k: FakeMuLan()))


# --- 6: a directory where an audio file belongs ----------------------------------------------------------------------

def test_a_directory_as_audio_is_one_line_naming_the_folder_flag(tmp_path, capsys):
    from musiclm_jax.audio.io import AudioLoadError, load_audio

    folder = tmp_path / "clips"
    folder.mkdir()
    with pytest.raises(AudioLoadError, match="is a directory, not an audio file"):
        load_audio(folder)
    rc, _, err = _run(capsys, ["semantic", "tokenize", "--model_dir", str(tmp_path), "--audio", str(folder),
                               "--out", str(tmp_path / "t.jsonl")])
    assert rc == 2
    _one_line_error(err, f"{folder} is a directory", "--audio_dir")
    rc, _, err = _run(capsys, ["mulan", "embed", "--model_dir", str(tmp_path), "--audio", str(folder)])
    assert rc == 2
    _one_line_error(err, f"{folder} is a directory", "--audio_dir")


def test_mulan_embed_takes_a_folder_with_audio_dir(tmp_path, capsys, fake_mulan):
    folder = tmp_path / "clips"
    folder.mkdir()
    _wav(folder / "a.wav"), _wav(folder / "b.wav", freq=220.0)
    rc, out, err = _run(capsys, ["mulan", "embed", "--model_dir", "m", "--audio_dir", str(folder)])
    assert rc == 0, err
    assert "a.wav" in out and "b.wav" in out


# --- 7: non-UTF-8 --text ---------------------------------------------------------------------------------------------

def test_non_utf8_text_is_one_line(tmp_path, capsys, fake_mulan):
    bad = os.fsdecode(b"caf\xe9 music")  # what Python makes of non-UTF-8 argv bytes: 'caf\udce9 music'
    assert "\udce9" in bad
    rc, _, err = _run(capsys, ["mulan", "embed", "--model_dir", str(tmp_path), "--text", "fine", "--text", bad])
    assert rc == 2
    _one_line_error(err, "--text", "not UTF-8")
    rc, out, err = _run(capsys, ["mulan", "embed", "--model_dir", "m", "--text", "café music"])  # UTF-8 is fine
    assert rc == 0 and "café" in out, err


# --- 8 / 10: semantic tokenize: all failing -> non-zero, no output; every skipped file named -------------------------

def test_semantic_tokenize_with_every_file_failing_exits_nonzero_and_writes_nothing(tmp_path, capsys, fake_semantic):
    bad = [_broken(tmp_path / f"bad{i}.wav") for i in range(3)]
    out = tmp_path / "tokens.jsonl"
    argv = ["semantic", "tokenize", "--model_dir", "m", "--out", str(out)]
    rc, _, err = _run(capsys, argv + sum((["--audio", b] for b in bad), []))
    assert rc == 2
    line = _one_line_error(err, "no file tokenized", "all 3 failed")
    assert all(b in line for b in bad)
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_semantic_tokenize_names_every_skipped_file(tmp_path, capsys, fake_semantic):
    folder = tmp_path / "audio"
    folder.mkdir()
    _wav(folder / "good.wav")
    bad = [_broken(folder / f"bad{i}.wav") for i in range(7)]
    out = tmp_path / "tokens.jsonl"
    rc, stdout, err = _run(capsys, ["semantic", "tokenize", "--model_dir", "m", "--audio_dir", str(folder),
                                    "--out", str(out)])
    assert rc == 0, err
    assert "skipped 7 of 8 file(s)" in stdout
    assert all(b in stdout for b in bad), stdout
    assert [json.loads(r)["path"] for r in out.read_text().splitlines()] == [str(folder / "good.wav")]


def test_semantic_corpus_with_no_usable_audio_names_the_failures(tmp_path, capsys, fake_semantic):
    folder = tmp_path / "audio"
    folder.mkdir()
    bad = [_broken(folder / f"bad{i}.wav") for i in range(6)]
    rc, _, err = _run(capsys, ["semantic", "eval", "--model_dir", "m", "--audio_dir", str(folder),
                               "--out", str(tmp_path / "e.json")])
    assert rc == 2
    line = _one_line_error(err, "no usable audio", "all 6 file(s) failed")
    assert all(os.path.basename(b) in line for b in bad)


# --- 9 / 8: mulan embed skips, counts and names bad files; nothing embedded -> non-zero ------------------------------

def test_mulan_embed_skips_counts_and_names_bad_files(tmp_path, capsys, fake_mulan):
    good = _wav(tmp_path / "good.wav")
    bad = [_broken(tmp_path / f"bad{i}.wav") for i in range(6)] + [str(tmp_path / "missing.wav")]
    argv = ["mulan", "embed", "--model_dir", "m", "--out", str(tmp_path / "e.json")]
    rc, out, err = _run(capsys, argv + sum((["--audio", p] for p in [bad[0], good] + bad[1:]), []))
    assert rc == 0, err
    assert "skipped 7 of 8 audio file(s)" in out and all(b in out for b in bad), out
    saved = json.loads((tmp_path / "e.json").read_text())
    assert [a["path"] for a in saved["audio"]] == [good]
    assert [s["path"] for s in saved["skipped"]] == [bad[0]] + bad[1:]
    rc, _, err = _run(capsys, ["mulan", "embed", "--model_dir", "m", "--audio", bad[0], "--audio", bad[-1]])
    assert rc == 2
    _one_line_error(err, "nothing embedded", "all 2 audio file(s) failed", bad[0], bad[-1])


# --- 15: corrupt mp3 -------------------------------------------------------------------------------------------------

def test_corrupt_mp3_is_could_not_decode_without_decoder_noise(tmp_path, capfd):
    from musiclm_jax.audio.io import AudioLoadError, load_audio

    path = tmp_path / "song.mp3"
    path.write_bytes(b"ID3" + np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioLoadError) as e:
        load_audio(path)
    msg = str(e.value)
    assert msg.startswith(f"could not decode {path} (corrupt or unsupported audio")
    assert "does not exist" not in msg and "pipe" not in msg
    err = capfd.readouterr().err
    assert "MPEG" not in err and "mpg123" not in err and "resync" not in err, err
    # a good file still loads, and stderr works afterwards
    wave, sr = load_audio(_wav(tmp_path / "ok.wav"))
    assert sr == SR and wave.shape == (SR,)
    os.write(2, b"still here\n")
    assert "still here" in capfd.readouterr().err


# --- 15: eval outputs default outside the model directory -----------------------------------------------------------

def test_eval_commands_do_not_write_into_the_model_directory(tmp_path, monkeypatch, capsys, fake_semantic):
    from musiclm_jax.eval import default_output
    from musiclm_jax.mulan import evaluate as mev
    from musiclm_jax.semantic import evaluate as sev

    assert default_output("weights/musiclm/semantic/", "x.json") == os.path.join("out", "eval", "semantic", "x.json")
    model_dir = tmp_path / "weights" / "semantic"
    model_dir.mkdir(parents=True)
    (model_dir / "checkpoint").write_text("x")
    audio = tmp_path / "audio"
    audio.mkdir()
    _wav(audio / "a.wav")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sev, "evaluate_tokenizer", lambda tok, waves, sr, clips: {"clips": len(waves)})
    rc, out, err = _run(capsys, ["semantic", "eval", "--model_dir", str(model_dir), "--audio_dir", str(audio)])
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "eval" / "semantic" / "semantic_eval.json").read_text()) == {"clips": 1}
    assert os.listdir(model_dir) == ["checkpoint"]

    import musiclm_jax.data.synthcaps.clips as mdata
    from musiclm_jax.mulan.api import MuLan

    mulan_dir = tmp_path / "weights" / "mulan"
    mulan_dir.mkdir()
    fake = FakeMuLan()
    fake.cfg = argparse.Namespace(embed_dim=4)
    monkeypatch.setattr(MuLan, "from_checkpoint", classmethod(lambda cls, *a, **k: fake))
    monkeypatch.setattr(mdata, "synthcaps_clips", lambda **kw: [{"audio": np.zeros(10), "caption": "c"}])
    monkeypatch.setattr(mev, "evaluate_mulan", lambda m, clips: {"n": len(clips)})
    monkeypatch.setattr(mev, "markdown_table", lambda results: "table")
    monkeypatch.setattr(mev, "text_separation", lambda embed, tokens=None: {"tempo_cosine": 0.5})
    rc, out, err = _run(capsys, ["mulan", "eval", "--model_dir", str(mulan_dir), "--no_baselines"])
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "eval" / "mulan" / "eval_test.json").read_text()) == {
        "mulan": {"n": 1}, "text_separation": {"tempo_cosine": 0.5}}
    assert "tempo_cosine 0.500" in out
    assert os.listdir(mulan_dir) == []


# --- 15: quickstart --dry_run creates nothing ------------------------------------------------------------------------

def test_quickstart_dry_run_creates_no_directories(tmp_path, capsys):
    from musiclm_jax import quickstart

    work = tmp_path / "work"
    quickstart.run(str(work), str(tmp_path / "o"), quickstart.RECIPES["smoke"], dry_run=True)
    assert "musiclm_jax.cli codec train" in capsys.readouterr().out
    assert not work.exists() and not (tmp_path / "o").exists()


# --- 15 / 10: eval fit-probe with no probe to write; every skipped item named ----------------------------------------

def _reference(folder, instruments, missing=0):
    folder.mkdir()
    rows = [{"id": f"c{i}", "prompt": f"clip {i}", "wav": os.path.basename(_wav(folder / f"c{i}.wav", 1.0,
                                                                                  220.0 * (i + 1))),
             "instrument": inst} for i, inst in enumerate(instruments)]
    rows += [{"id": f"gone{i}", "prompt": "x", "wav": f"gone{i}.wav", "instrument": "piano"} for i in range(missing)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def test_fit_probe_with_no_probe_to_write_exits_nonzero(tmp_path, capsys):
    ref = _reference(tmp_path / "ref", ["piano", "piano", "piano"])
    probes = tmp_path / "probes"
    rc, _, err = _run(capsys, ["eval", "fit-probe", "--reference_dir", ref, "--attribute", "instrument",
                               "--out_dir", str(probes)])
    assert rc == 2
    _one_line_error(err, "no probe to fit", "instrument", "two or more classes")
    assert not probes.exists()


def test_fit_probe_names_every_skipped_item(tmp_path, capsys):
    ref = _reference(tmp_path / "ref", ["piano", "flute", "piano", "flute"], missing=12)
    rc, out, err = _run(capsys, ["eval", "fit-probe", "--reference_dir", ref, "--attribute", "instrument",
                                 "--out_dir", str(tmp_path / "probes")])
    assert rc == 0, err
    assert "skipped 12 item(s)" in out and all(f"gone{i} (" in out for i in range(12)), out
    assert os.path.exists(tmp_path / "probes" / "probe_mel_instrument.npz")


def test_eval_report_names_every_skipped_item(tmp_path):
    from musiclm_jax.eval.report import write_report

    skipped = {"count": 25, "items": [{"item": f"x{i}", "reason": "missing"} for i in range(25)]}
    paths = write_report(str(tmp_path), {"s": {"metrics": {"n": 1}}}, {}, [], {"skipped": skipped}, plots=False)
    md = open(paths["markdown"]).read()
    assert "Skipped 25 item(s)" in md and all(f"x{i} (missing)" in md for i in range(25))


# --- 12: --steps shorter than the warmup ----------------------------------------------------------------------------

def test_short_schedule_fits_its_warmup_and_a_missing_length_names_steps():
    from musiclm_jax.train.optimizers import make_schedule
    from musiclm_jax.train.steps import steps_bindings

    fn = make_schedule(1e-2, "cosine", warmup_steps=50, total_steps=20, final_fraction=0.0)
    lrs = [float(fn(s)) for s in range(21)]
    assert lrs[9] == pytest.approx(1e-2) and lrs[0] < lrs[5] < lrs[9]   # warms up over half the run
    assert lrs[20] == pytest.approx(0.0, abs=1e-7) and lrs[15] < lrs[10]  # then decays to the end of the run
    assert float(make_schedule(1e-2, "linear", 5, 1)(0)) > 0
    with pytest.raises(ValueError, match="--steps"):
        make_schedule(1e-2, "cosine", 5, None)
    assert steps_bindings(None) == [] and steps_bindings(20) == ["TRAIN_STEPS = 20"]
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        steps_bindings(0)


def test_semantic_train_steps_sets_the_loop_and_schedule_length(monkeypatch, tmp_path, capsys):
    import gin

    import musiclm_jax.train.trainer as trainer
    from musiclm_jax.semantic.family import W2vBertFamily

    seen = {}

    def fake_train():
        assert str(gin.query_parameter("train.num_steps")) == "%TRAIN_STEPS"
        seen["num_steps"] = gin.query_parameter("%TRAIN_STEPS")
        family = W2vBertFamily()   # gin: warmup 20 (models/w2v_bert_tiny.gin), total_steps = %TRAIN_STEPS
        seen["total_steps"], seen["warmup"] = family.total_steps, family.warmup_steps
        family.optimizers(["w2v_bert"], None)  # before: "needs total_steps > warmup_steps" for --steps <= 20
        return {"step": seen["num_steps"], "last_metrics": {}}

    monkeypatch.setattr(trainer, "train", fake_train)
    try:
        rc, out, err = _run(capsys, ["semantic", "train", "--gin_file=gin/experiments/w2v_bert_tiny_synthetic.gin",
                                     f"--model_dir={tmp_path}", "--steps", "10"])
    finally:
        gin.clear_config()
    assert rc == 0, err
    assert seen == {"num_steps": 10, "total_steps": 10, "warmup": 20}
    assert "done: step 10" in out
    rc, _, err = _run(capsys, ["semantic", "train", "--gin_file=gin/experiments/w2v_bert_tiny_synthetic.gin",
                               "--steps", "0"])
    gin.clear_config()
    assert rc == 2
    _one_line_error(err, "--steps must be >= 1")


def test_mulan_train_has_steps(monkeypatch, tmp_path, capsys):
    import gin

    import musiclm_jax.mulan.run as run

    seen = {}
    monkeypatch.setattr(run, "train_mulan", lambda: seen.update(
        steps=gin.query_parameter("%TRAIN_STEPS"), loop=str(gin.query_parameter("train.num_steps")))
        or {"step": seen["steps"], "last_metrics": {}})
    try:
        rc, out, err = _run(capsys, ["mulan", "train", "--gin_file=gin/experiments/mulan_tiny_synthcaps.gin",
                                     f"--model_dir={tmp_path}", "--steps", "7"])
    finally:
        gin.clear_config()
    assert rc == 0, err
    assert seen == {"steps": 7, "loop": "%TRAIN_STEPS"} and "done: step 7" in out


# --- 13: tokenize: a missing --module_import, a source dataset not built ---------------------------------------------

def test_tokenize_missing_module_import_is_one_line(tmp_path, capsys):
    rc, _, err = _run(capsys, ["tokenize", "--tasks=x", f"--output_cache_dir={tmp_path}",
                               "--module_import", "no_such_pkg.tasks_module"])
    assert rc == 2
    _one_line_error(err, "--module_import no_such_pkg.tasks_module", "no module named 'no_such_pkg'")


def test_build_command_of_a_tfds_name():
    from musiclm_jax.tasks.cache import build_command

    assert build_command("synthcaps/tiny_4s_n4:1.0.0", "/d") == (
        "musiclm-jax data build --dataset synthcaps --config tiny --clip_seconds 4 --num_scores 4 --data_dir /d")
    assert build_command("synthcaps/small_24000hz_2p5s:1.0.0", None) == (
        "musiclm-jax data build --dataset synthcaps --config small --sample_rate 24000 --clip_seconds 2.5 "
        "--data_dir ~/tensorflow_datasets")
    assert build_command("synthcaps/small", "/d") == (
        "musiclm-jax data build --dataset synthcaps --config small --data_dir /d")


def test_tokenize_a_source_that_is_not_built_names_the_build_command(tmp_path, capsys):
    empty = tmp_path / "tfds"
    empty.mkdir()
    rc, _, err = _run(capsys, ["tokenize", "--tasks=synthcaps_tiny_semantic", f"--output_cache_dir={tmp_path / 'c'}",
                               f"--tfds_data_dir={empty}"])
    assert rc == 2
    _one_line_error(err, "synthcaps/tiny_4s_n4", "is not built",
                    f"musiclm-jax data build --dataset synthcaps --config tiny --clip_seconds 4 --num_scores 4 "
                    f"--data_dir {empty}")
    assert not (tmp_path / "c").exists()


def test_tokenize_with_every_clip_failing_exits_nonzero(tmp_path, monkeypatch, capsys):
    from musiclm_jax.tasks import cache

    entry = {"train": {"examples": 0, "failed": 2, "failed_clips": ["s1: NaN samples", "s2: empty"]},
             "test": {"examples": 0, "failed": 1, "failed_clips": ["s3: empty"]}}
    assert cache.tokenized_nothing(entry)
    assert not cache.tokenized_nothing({"train": dict(entry["train"], examples=1), "test": entry["test"]})
    assert not cache.tokenized_nothing({"train": {"examples": 0, "failed": 0, "failed_clips": []}})
    report = {"output_cache_dir": str(tmp_path), "tasks": {"synthcaps_tiny_semantic": entry},
              "tokenized_nothing": ["synthcaps_tiny_semantic"]}
    monkeypatch.setattr(cache, "cache_tasks", lambda *a, **k: report)
    rc, out, err = _run(capsys, ["tokenize", "--tasks=synthcaps_tiny_semantic", f"--output_cache_dir={tmp_path}",
                                 f"--report={tmp_path / 'r.json'}"])
    assert rc == 2
    _one_line_error(err, "tokenized no clip of task(s) synthcaps_tiny_semantic", "all 3 clip(s) failed",
                    "s1: NaN samples", "failed_clips-<split>.txt")
    assert json.loads((tmp_path / "r.json").read_text()) == report  # the report is still written
    report["tasks"]["synthcaps_tiny_semantic"]["train"]["examples"] = 5
    del report["tokenized_nothing"]
    assert _run(capsys, ["tokenize", "--tasks=synthcaps_tiny_semantic", f"--output_cache_dir={tmp_path}"])[0] == 0
