"""Gin layout: every experiment parses; a missing REQUIRED binding, a bad flag, a mesh that does not divide the
model: one clear error each, before any compute."""
import glob
import os

import gin
import pytest

from musiclm_jax.train import __main__ as train_main
from musiclm_jax.train import gin_utils, partitioning

EXPERIMENTS = sorted(os.path.relpath(p, gin_utils.GIN_DIR)
                     for p in glob.glob(str(gin_utils.GIN_DIR / "experiments" / "lm_*.gin")))


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_parses_when_its_required_values_are_given(path):
    extra = ["OUTPUT_PATH = '/tmp/x.jsonl'"] if "infer" in path else []
    gin_utils.parse_config([path], ["MODEL_DIR = '/tmp/x'", *extra])
    assert gin.query_parameter("MODEL_DIR/macro.value") == "/tmp/x"
    assert gin.query_parameter("make_mesh.model") is not None


def test_missing_required_binding_is_one_clear_error():
    with pytest.raises(ValueError, match=r"missing required gin binding\(s\): MODEL_DIR \(used by train.model_dir\)"):
        gin_utils.parse_config(["experiments/lm_tiny_synthetic.gin"])
    gin.clear_config()
    with pytest.raises(ValueError, match="OUTPUT_PATH"):
        gin_utils.parse_config(["experiments/lm_tiny_synthetic_infer.gin"], ["MODEL_DIR = '/tmp/x'"])


def test_typo_macro_and_syntax_error_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"TRIAN_STEPS set on the command line but used by no binding.*TRAIN_STEPS"):
        gin_utils.parse_config(["experiments/lm_tiny_synthetic.gin"], ["MODEL_DIR = '/tmp/x'", "TRIAN_STEPS = 30"])
    gin.clear_config()
    gin_utils.parse_config(["experiments/lm_tiny_synthetic.gin"], ["MODEL_DIR = '/tmp/x'", "TRAIN_STEPS = 30"])
    assert gin.query_parameter("TRAIN_STEPS/macro.value") == 30
    gin.clear_config()
    bad = tmp_path / "bad.gin"
    bad.write_text("train.num_steps = = 3\n")
    with pytest.raises(ValueError, match=r"gin syntax error in .*bad.gin:1"):
        gin_utils.parse_config([str(bad)])


def test_readme_gin_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gin_utils.parse_config(["gin/experiments/lm_tiny_synthetic.gin"], ["MODEL_DIR = '/tmp/x'"])
    assert gin.query_parameter("MODEL_DIR/macro.value") == "/tmp/x"


def test_cli_errors_are_one_line_without_traceback(capsys, tmp_path):
    assert train_main.main(["--gin_file=gin/experiments/lm_tiny_synthetic.gin"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: missing required gin binding(s): MODEL_DIR") and "\n" not in err
    gin.clear_config()
    assert train_main.main(["--gin_file=gin/experiments/lm_tiny_synthetic.gin", "--bogus=1"]) == 2
    assert "unknown argument '--bogus=1'" in capsys.readouterr().err
    gin.clear_config()
    assert train_main.main(["--gin_file=gin/experiments/nope.gin", f"--gin.MODEL_DIR={tmp_path}"]) == 2
    assert "gin file 'gin/experiments/nope.gin' not found" in capsys.readouterr().err
    gin.clear_config()
    assert train_main.main(["--gin_file=gin/models/lm_tiny.gin"]) == 2  # no run file: train.* never bound
    err = capsys.readouterr().err.strip()
    assert "Required bindings for `train`" in err and "model_dir" in err and "\n" not in err


def test_mesh_that_does_not_divide_the_model_fails_before_compute(capsys, tmp_path):
    # lm_tiny has 4 heads: a model axis of 8 cannot split them.
    args = ["--gin_file=gin/experiments/lm_tiny_synthetic.gin", f"--gin.MODEL_DIR={tmp_path}",
            "--gin.make_mesh.data=1", "--gin.make_mesh.model=8"]
    assert train_main.main(args) == 2
    err = capsys.readouterr().err
    assert "['attn']['wk'] has dim 1 of size 4, which mesh axes model (size 8) do not divide" in err
    assert not os.path.exists(tmp_path / "checkpoints")


def test_flag_values_and_rule_overrides():
    assert gin_utils._as_gin_value("/tmp/a b") == "'/tmp/a b'"
    assert gin_utils._as_gin_value("12") == "12" and gin_utils._as_gin_value("@make_mesh") == "@make_mesh"
    assert gin_utils._as_gin_value("'x'") == "'x'" and gin_utils._as_gin_value("True") == "True"
    gin.parse_config("logical_axis_rules.overrides = [('embed', None), ('length', 'model')]")
    rules = dict(partitioning.logical_axis_rules())
    assert rules["embed"] is None and rules["length"] == "model" and rules["mlp"] == "model"


def test_entry_point_flags_are_t5x_absl_flags(capsys):
    import logging

    from absl import flags, logging as absl_logging

    files, bindings, paths = gin_utils.parse_flags(
        ["--gin_file", "a.gin", "--gin_file=b.gin", "--gin_bindings=X = 1", "--gin.Y=/tmp/y",
         "--gin_search_paths=p1,p2", "--gin_search_path=p3", "--verbosity=1"], "test")
    assert files == ["a.gin", "b.gin"] and bindings == ["X = 1", "Y = '/tmp/y'"] and paths == ["p1", "p2", "p3"]
    assert flags.FLAGS.verbosity == 1  # absl's own logging flags reach absl
    gin_utils.parse_flags(["--gin_file=a.gin"], "test")  # parsed afresh: no flag left over from the call before
    assert absl_logging.get_verbosity() == absl_logging.WARNING  # orbax's INFO chatter off by default ...
    assert logging.getLogger("musiclm_jax.train").getEffectiveLevel() == logging.INFO  # ... ours on
    with pytest.raises(ValueError, match="unknown argument '--bogus=1'"):
        gin_utils.parse_flags(["--gin_file=a.gin", "--bogus=1"], "test")
    with pytest.raises(ValueError, match="no --gin_file given"):
        gin_utils.parse_flags(["--gin.X=1"], "test")
    with pytest.raises(SystemExit):
        gin_utils.parse_flags(["--help"], "Train a model family.")
    out = capsys.readouterr().out
    assert "--gin_search_paths" in out and "--gin.KEY=VALUE" in out


def test_cli_train_commands_take_the_same_gin_flags(monkeypatch):
    from musiclm_jax import cli
    from musiclm_jax.train import launch

    seen = {}
    monkeypatch.setattr(launch, "launch", lambda entry, files, bindings, paths, **kw: seen.update(
        files=files, bindings=bindings, paths=paths) or {"step": 0})
    assert cli.main(["codec", "train", "--gin_file=x.gin", "--gin_search_paths=a,b", "--gin_search_path=c",
                     "--gin.TRAIN_STEPS=3", "--gin_bindings=Z = 2"]) == 0
    assert seen == {"files": ["x.gin"], "bindings": ["Z = 2", "TRAIN_STEPS = 3"], "paths": ["a", "b", "c"]}
    with pytest.raises(SystemExit):  # a command without gin flags refuses the shorthand
        cli.main(["demo", "--gin.X=1"])
