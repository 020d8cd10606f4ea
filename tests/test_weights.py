"""The shipped weights (weights/musiclm, made by `make quickstart`): they load, make distinct non-silent audio from
different prompts, drive `musiclm-jax demo`, and the launch/ notebook runs top to bottom on them."""
import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest

from musiclm_jax.lm import stages as st
from musiclm_jax.pipeline import MusicLM

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "musiclm"
PROMPTS = ["a calm piano waltz", "an energetic rock groove with distorted guitar", "a slow bossa nova"]


@pytest.fixture(scope="module")
def lm():
    return MusicLM.from_pretrained(str(WEIGHTS))


def test_shipped_weights_are_small_and_load(lm):
    # The codec is a link to weights/codec_vocos (24 MB, counted there): the rest is MuLan, w2v-BERT and the LMs.
    assert (WEIGHTS / "codec").is_symlink()
    size = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file() and "codec" not in p.relative_to(WEIGHTS).parts)
    assert size < 60e6, f"weights/musiclm is {size / 1e6:.1f} MB without its codec"
    assert lm.sizes == st.QUICKSTART_COARSE_BEAT and lm.sample_rate == 16000 and lm.has_tempo and lm.has_key
    assert lm.layouts["coarse"].has_beat and lm.models["coarse"].cfg.aligned_inputs
    assert lm.sampling["guide_tempo"] and lm.sampling["guide_key"]
    assert (WEIGHTS / "MODEL_CARD.md").exists()


def test_two_seconds_from_three_prompts_are_finite_audible_and_distinct(lm):
    waves = lm.generate(PROMPTS, 2.0, seed=0, progress=False)
    assert waves.shape == (3, 2 * 16000) and np.isfinite(waves).all()
    rms = np.sqrt(np.mean(waves ** 2, axis=-1))
    assert (rms > 1e-3).all(), rms
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(waves[i], waves[j], atol=1e-3)


def test_demo_uses_the_shipped_weights(tmp_path, capsys, monkeypatch):
    from musiclm_jax import cli

    monkeypatch.chdir(ROOT)  # the demo finds weights/musiclm relative to the repository root
    assert cli.main(["demo", "--out_dir", str(tmp_path), "--num_clips", "1", "--duration", "2"]) == 0
    out = capsys.readouterr().out
    assert "untrained parts" not in out and "MuLan score" in out
    assert (tmp_path / "generated.wav").exists() and (tmp_path / "generated.png").exists()


def test_launch_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    # Executes every code cell in order in one namespace, as a kernel would (no Jupyter needed in CI).
    nb = json.loads((ROOT / "launch" / "musiclm_quickstart.ipynb").read_text())
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"notebook cell {i}", "exec"), namespace)
    assert (tmp_path / "spectrograms.png").exists() and len(list(tmp_path.glob("*.wav"))) == 3
    assert np.isfinite(namespace["out"].waves).all()
    assert np.isfinite(namespace["tune"]).all() and namespace["tune"].shape == (3 * 16000,)   # the melody cell


def test_shipped_melody_model_shares_the_parts_and_follows_a_hum():
    from musiclm_jax.melody.pitch import PitchMelody

    root = WEIGHTS.parent / "musiclm_melody"
    for part in ("mulan", "semantic", "codec", "stage_coarse", "stage_fine"):   # only the semantic stage is its own
        assert (root / part).is_symlink() and (root / part).resolve().is_dir(), part
    assert (root / "MODEL_CARD.md").exists() and (root / "eval" / "melody_whistle.json").exists()
    lm = MusicLM.from_pretrained(str(root))
    assert lm.sizes == dataclasses.replace(st.QUICKSTART_PITCH, beat_stages=("semantic", "coarse"))
    assert isinstance(lm.melody, PitchMelody) and lm.sampling["guide_melody"]
    t = np.arange(16000) / 16000
    hums = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220.0, 311.13)]   # A, then D#
    a, b = (lm.generate_full(["a calm piano waltz"], 1.0, melody=h, melody_sample_rate=16000, seed=0,
                             progress=False) for h in hums)
    assert np.isfinite(a.waves).all() and (a.tokens["semantic"] != b.tokens["semantic"]).any()
