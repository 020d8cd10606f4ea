"""Model merging (`musiclm-jax merge`): lam 0 and 1 give the two models bit for bit, lam in between interpolates
every stage-LM weight, the merged directory loads, and models that are not finetunings of one base are refused."""
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from musiclm_jax import cli, export
from musiclm_jax.train import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _perturbed_copy(src: pathlib.Path, dst: pathlib.Path, parts=export.STAGES, scale=0.01):
    shutil.copytree(src, dst)
    for i, part in enumerate(parts):
        step, meta, state = checkpoints.read_inference_state(str(dst / part))
        state = checkpoints.int_keys(state, meta["shapes"])
        rng = np.random.default_rng(i)
        moved = jax.tree.map(lambda x: (np.asarray(x) + scale * rng.normal(size=np.shape(x))).astype(np.asarray(x).dtype)
                             if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x), state)
        checkpoints._write_inference(str(dst / part), step, moved, meta, {"dropped": meta.get("dropped", [])})
        for name in ("config.gin", "operative_config.gin"):  # _write_inference starts the directory afresh
            shutil.copy2(src / part / name, dst / part / name)


def _leaves(model_dir) -> list[np.ndarray]:
    _, meta, state = checkpoints.read_inference_state(str(model_dir))
    return [np.asarray(x) for x in jax.tree.leaves(checkpoints.int_keys(state, meta["shapes"]))]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    a = root / "a"
    shutil.copytree(ROOT / "weights" / "musiclm", a)  # links followed: a self-contained copy
    _perturbed_copy(a, root / "b")
    return root, a, root / "b"


def test_endpoints_are_the_models_and_lam_interpolates(models, capsys):
    root, a, b = models
    for lam, want in ((0.0, a), (1.0, b)):
        out = root / f"m{lam}"
        assert cli.main(["merge", "--a", str(a), "--b", str(b), "--lam", str(lam), "--out", str(out)]) == 0
        for stage in export.STAGES:
            got, ref = _leaves(out / stage), _leaves(want / stage)
            assert all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(got, ref))
    assert '"lam": 1.0' in capsys.readouterr().out
    export.merge(str(a), str(b), 0.25, str(root / "m"))
    for stage in export.STAGES:
        for x, y, m in zip(_leaves(a / stage), _leaves(b / stage), _leaves(root / "m" / stage)):
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_allclose(m, 0.75 * x + 0.25 * y, rtol=1e-6, atol=1e-7)
    assert (root / "m" / "merge.json").exists() and not os.path.islink(root / "m" / "codec")
    from musiclm_jax.pipeline import MusicLM

    lm = MusicLM.from_pretrained(str(root / "m"))  # a complete, loadable model directory
    assert lm.sizes == MusicLM.from_pretrained(str(a)).sizes


def test_models_of_different_bases_are_refused(models, tmp_path, capsys):
    root, a, _ = models
    other_codec = tmp_path / "c"
    _perturbed_copy(a, other_codec, parts=("codec",))
    with pytest.raises(ValueError, match="the two models' codec differ"):
        export.merge(str(a), str(other_codec), 0.5, str(tmp_path / "out"))
    other_shapes = tmp_path / "d"
    shutil.copytree(a, other_shapes)
    shutil.rmtree(other_shapes / "stage_fine")
    shutil.copytree(a / "stage_coarse", other_shapes / "stage_fine")
    with pytest.raises(ValueError, match="are not two versions of one model"):
        export.merge(str(a), str(other_shapes), 0.5, str(tmp_path / "out2"))
    assert cli.main(["merge", "--a", str(a), "--b", str(a), "--lam", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--lam must be in [0, 1]" in capsys.readouterr().err
    assert cli.main(["merge", "--a", str(tmp_path), "--b", str(a), "--lam", "0.5", "--out", str(tmp_path / "y")]) == 2
    assert "is not an exported MusicLM" in capsys.readouterr().err


def test_pareto_front_and_monotone():
    from musiclm_jax.finetune.curve import monotone, pareto_front

    pts = {"a": (0.1, 0.9), "b": (0.5, 0.5), "c": (0.4, 0.4), "d": (0.9, 0.1)}
    assert pareto_front(pts) == ["a", "b", "d"]          # c is beaten by b on both axes
    assert monotone([pts["a"], pts["b"], pts["d"]]) and not monotone([pts["a"], pts["c"], pts["b"]])


def test_merge_curve_cli_merges_compares_and_plots(models, tmp_path, capsys):
    import json

    root, a, b = models
    prompts = tmp_path / "p.txt"
    prompts.write_text("a calm piano waltz\nan energetic rock groove with electric guitar\n")
    out = tmp_path / "curve"
    args = ["finetune", "curve", "--a", str(a), "--b", str(b), "--lams", "0", "1", "--prompts", str(prompts),
            "--out_dir", str(out), "--models", f"base_unguided={a}:unguided", "--rewards", "mulan", "pulse",
            "--seconds", "1", "--samples_per_prompt", "2", "--batch_size", "4"]
    assert cli.main(args) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert set(curve["points"]) == {"lam0", "lam1", "base_unguided"} and curve["lams"] == [0.0, 1.0]
    for p in curve["points"].values():
        assert -1.0 <= p["diversity"] <= 1.0 and np.isfinite(p["mulan"])
    assert curve["pareto_front"] and set(curve["pareto_front"]) <= set(curve["points"])
    assert isinstance(curve["monotone"], bool) and (out / "curve.png").stat().st_size > 1000
    assert (out / "lam_0" / "merge.json").exists() and "pareto front:" in capsys.readouterr().out
    assert cli.main(args[:6] + ["--lams", "0.5", "0.5"] + args[8:]) == 2
    assert "at least two different values" in capsys.readouterr().err
