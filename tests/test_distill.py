"""Guidance distillation (`musiclm-jax finetune distill-data / distill`): the KL is zero when student and teacher
agree, a short distillation of the shipped semantic stage moves the unguided student toward the guided teacher on
held-out prompts, the result loads and decodes its semantic stage without guidance, and bad input is one line."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax import cli
from musiclm_jax.finetune import distill as ds
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAPTIONS = ["a calm piano waltz", "an energetic rock groove with distorted guitar", "sad violin in a minor key",
            "upbeat jazz with brushed drums", "a slow ambient pad", "a fast techno beat with a bass line",
            "a bright flute melody over strings", "a reggae rhythm with organ", "a gentle acoustic guitar ballad",
            "a marching brass band", "a funky slap bass groove", "a soft choir with church organ"]


def test_kl_is_zero_when_the_student_is_the_guided_teacher():
    layout = st.StageLayout("semantic", st.TINY)
    cfg = tr.TransformerConfig(vocab_size=layout.vocab_size, num_layers=1, num_heads=2, head_dim=8, d_model=16,
                               d_ff=32, dropout_rate=0.0, dtype="float32", max_len=64)
    family = ds.GuidanceDistillation(cfg)
    with nnx.use_eager_sharding(False):
        model = tr.Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    mulan = rng.integers(0, st.TINY.mulan_codes, (3, st.TINY.mulan_levels))
    inputs = jnp.asarray(layout.build_inputs(mulan=mulan))
    targets = jnp.asarray(layout.build_targets(semantic=rng.integers(0, st.TINY.semantic_codes, (3, 10))))
    uncond = jnp.asarray(layout.uncond_inputs(inputs))
    mask = layout.logit_mask()
    batch = {"inputs": inputs, "targets": targets}
    for scale, zero in ((1.0, True), (3.0, False)):  # scale 1 is the conditional model itself
        teacher = ds.guided_logprobs(family, model, inputs, targets, uncond, scale, mask)
        assert teacher.shape == (3, 10, cfg.vocab_size)
        kl, n, metrics = family.loss({"model": model}, {**batch, "teacher_logprobs": teacher}, jax.random.key(0))
        assert float(n) == 30
        assert (abs(float(kl)) < 1e-4) == zero, (scale, float(kl))
        assert float(kl) > -1e-4  # a KL is never negative
    # only the ids the stage may emit carry probability
    lo, hi = layout.streams["semantic"]
    p = np.exp(np.asarray(teacher))
    np.testing.assert_allclose(p[..., lo:hi].sum(-1), 1.0, atol=1e-5)
    assert lo > 0 and p[..., :lo].max() == 0 and (hi == p.shape[-1] or p[..., hi:].max() == 0)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    work = tmp_path_factory.mktemp("distill")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": c}) + "\n" for c in CAPTIONS))
    teacher = str(ROOT / "weights" / "musiclm")
    assert cli.main(["finetune", "distill-data", "--model_dir", teacher, "--prompts", str(prompts), "--out",
                     str(work / "d.npz"), "--seconds", "2", "--samples_per_prompt", "4",
                     "--batch_size", "8"]) in (0, None)
    assert cli.main(["finetune", "distill", "--model_dir", teacher, "--data", str(work / "d.npz"), "--out_dir",
                     str(work / "out"), "--steps", "30", "--batch_size", "8", "--learning_rate", "1e-4",
                     "--no_progress"]) in (0, None)
    return work


def test_distillation_moves_the_unguided_student_toward_the_guided_teacher(distilled):
    data = ds.load_distill_set(str(distilled / "d.npz"))
    assert data["targets"].shape == (48, 50) and float(data["guidance_scale"]) == 3.0  # the model's own guidance
    report = json.loads((distilled / "out" / "musiclm" / "distill.json").read_text())
    before, after = report["held_out"]["teacher_unguided"], report["held_out"]["student_unguided"]
    assert report["eval_rows"] == 8 and before["rows"] == 8
    # the last 8 rows are the samples of the last two prompts, which the student never trained on
    assert after["kl"] < 0.85 * before["kl"], (before, after)


def test_distilled_model_decodes_its_semantic_stage_without_guidance(distilled, monkeypatch):
    from musiclm_jax.pipeline import MusicLM

    lm = MusicLM.from_pretrained(str(distilled / "out" / "musiclm"), load_semantic_tokenizer=False)
    assert lm.unguided_stages == ("semantic",) and lm.sampling["guidance_scale"] == 3.0
    scales = {}
    original = MusicLM._decode_stage

    def spy(self, stage, *args, **kwargs):
        scales[stage] = args[7]  # guidance_scale
        return original(self, stage, *args, **kwargs)

    monkeypatch.setattr(MusicLM, "_decode_stage", spy)
    wave = lm.generate(["a calm piano waltz"], 0.5, progress=False)
    assert wave.shape == (1, lm.sample_rate // 2) and np.isfinite(wave).all()
    assert scales == {"semantic": 1.0, "coarse": 3.0, "fine": 1.0}
    with pytest.raises(ValueError, match="unguided_stages"):
        MusicLM(mulan=lm.mulan, codec=lm.codec, semantic_lm=lm.models["semantic"], coarse_lm=lm.models["coarse"],
                fine_lm=lm.models["fine"], sizes=lm.sizes, semantic_rate=lm.semantic_rate,
                unguided_stages=["fine"])


def test_bad_input_is_one_line(tmp_path, capsys):
    teacher = str(ROOT / "weights" / "musiclm")
    (tmp_path / "empty.txt").write_text("\n\n")
    cases = [
        (["finetune", "distill-data", "--model_dir", teacher, "--prompts", str(tmp_path / "none.jsonl"), "--out",
          str(tmp_path / "d.npz")], "not found"),
        (["finetune", "distill-data", "--model_dir", teacher, "--prompts", str(tmp_path / "empty.txt"), "--out",
          str(tmp_path / "d.npz")], "holds no prompts"),
        (["finetune", "distill", "--model_dir", teacher, "--data", str(tmp_path / "none.npz"), "--out_dir",
          str(tmp_path / "o")], "distill-data"),
        (["finetune", "distill", "--model_dir", str(tmp_path), "--data", str(tmp_path / "none.npz"), "--out_dir",
          str(tmp_path / "o")], "not an exported MusicLM"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
