"""RL finetuning (`musiclm-jax finetune rl`): RLOO advantages, the policy-gradient loss (zero at the base with no
advantage, the exact KL), a reward on a planted token learned by the shipped semantic stage within a few dozen
steps, resumption, the audio path through the CLI, and one-line errors."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax import cli
from musiclm_jax.finetune import rl
from musiclm_jax.finetune.distill import masked_log_softmax
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr

ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = str(ROOT / "weights" / "musiclm")
CAPTIONS = ["a calm piano waltz in C major at 90 BPM", "an energetic rock groove in E minor at 140 BPM",
            "sad violin in A minor, slow tempo around 70 BPM", "upbeat jazz with brushed drums at 120 BPM",
            "a slow ambient pad in F major", "a fast techno beat at 128 BPM in G minor"]


def test_rloo_advantages():
    adv = rl.rloo_advantages(np.array([1.0, 0.0, 2.0, 2.0]), 2, normalize=False)
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0, 0.0])
    # a nan reward counts as its prompt's mean; a prompt with no score gets no push
    adv = rl.rloo_advantages(np.array([1.0, np.nan, 3.0, np.nan, np.nan, np.nan]), 3, normalize=False)
    np.testing.assert_allclose(adv, [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    assert rl.rloo_advantages(np.array([0.0, 5.0, 1.0, 1.0]), 2).std() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        rl.rloo_advantages(np.zeros(3), 1)


def _two_tiny_lms():
    """A tiny semantic layout, its transformer config, two differently initialised LMs, and a batch of 3."""
    layout = st.StageLayout("semantic", st.TINY)
    cfg = tr.TransformerConfig(vocab_size=layout.vocab_size, num_layers=1, num_heads=2, head_dim=8, d_model=16,
                               d_ff=32, dropout_rate=0.0, dtype="float32", max_len=64)
    with nnx.use_eager_sharding(False):
        lms = tr.Transformer(cfg, rngs=nnx.Rngs(0)), tr.Transformer(cfg, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(layout.build_inputs(mulan=rng.integers(0, st.TINY.mulan_codes, (3, st.TINY.mulan_levels))))
    targets = jnp.asarray(layout.build_targets(semantic=rng.integers(0, st.TINY.semantic_codes, (3, 10))))
    return layout, cfg, lms, inputs, targets


def test_policy_gradient_loss_is_zero_at_the_base_and_its_kl_is_exact():
    layout, cfg, (base, other), inputs, targets = _two_tiny_lms()
    family = rl.PolicyGradient(cfg, kl_weight=0.5)
    logits, _, _ = family._forward(base, {"inputs": inputs, "targets": targets}, deterministic=True)
    ref = masked_log_softmax(logits, layout.logit_mask())
    batch = {"inputs": inputs, "targets": targets, "advantages": jnp.zeros(3), "ref_logprobs": ref}
    loss, n, metrics = family.loss({"model": base}, batch, jax.random.key(0))
    assert float(n) == 30 and abs(float(loss)) < 1e-4 and abs(float(metrics["kl"])) < 1e-4
    # another policy: the KL term is the exact KL over the stage's ids, and the advantage term is -A log pi
    loss, n, metrics = family.loss({"model": other}, {**batch, "advantages": jnp.asarray([1.0, 0.0, -1.0])},
                                   jax.random.key(0))
    o_logits, _, _ = family._forward(other, batch, deterministic=True)
    o = np.asarray(masked_log_softmax(o_logits, layout.logit_mask()))
    p, r = np.exp(o), np.asarray(ref)
    support = r > -1e29
    want_kl = np.sum(np.where(support, p * (o - np.where(support, r, 0.0)), 0.0))
    taken = np.take_along_axis(o, np.asarray(targets)[..., None], -1)[..., 0]
    want_pg = -(taken[0].sum() - taken[2].sum())
    assert float(metrics["kl"]) == pytest.approx(want_kl, rel=1e-4) and want_kl > 0
    assert float(metrics["pg"]) == pytest.approx(want_pg, rel=1e-4)
    assert float(loss) == pytest.approx(want_pg + 0.5 * want_kl, rel=1e-4)
    with pytest.raises(ValueError, match="advantages"):
        family.loss({"model": base}, {"inputs": inputs, "targets": targets}, jax.random.key(0))


PLANTED = np.arange(8)   # the semantic codes the planted reward asks for (an eighth of the 64)


def planted_share(codes) -> np.ndarray:
    return np.mean(np.isin(np.asarray(codes), PLANTED), axis=-1)


def planted_score(layout):
    def score(targets, prompts):
        return planted_share(layout.targets_to_codes(targets))
    return score


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from musiclm_jax.pipeline import MusicLM

    out = tmp_path_factory.mktemp("rl")
    layout = MusicLM.from_pretrained(BASE, load_semantic_tokenizer=False).layouts["semantic"]
    kwargs = dict(score=planted_score(layout), prompts_per_round=4, samples_per_prompt=4, steps_per_round=4,
                  batch_size=16, learning_rate=3e-3, kl_weight=0.01, seconds=1.0)
    first = rl.finetune_rl(BASE, CAPTIONS, str(out), rounds=1, **kwargs)
    again = rl.finetune_rl(BASE, CAPTIONS, str(out), rounds=3, **kwargs)   # resumes: round 0 is kept
    return out, first, again


def test_a_planted_token_reward_is_learned_within_a_few_dozen_steps(planted):
    out, first, again = planted
    rounds = [r["mean_reward"] for r in again["report"]["rounds"]]
    assert [r["mean_reward"] for r in first["report"]["rounds"]] == rounds[:1]   # kept, not redone
    assert len(rounds) == 3 and again["report"]["steps"] == 12
    # 8 policy-gradient steps: the planted codes' share of the samples grows well beyond its start
    assert rounds[-1] > rounds[0] + 0.15, rounds
    manifest = json.load(open(pathlib.Path(again["musiclm"]) / "musiclm.json"))
    assert manifest["unguided_stages"] == ["semantic"]
    metrics = [json.loads(line) for line in open(out / "train" / "metrics.jsonl")]
    assert metrics[-1]["step"] == 12 and np.isfinite(metrics[-1]["kl"])


def test_the_finetuned_model_generates_with_its_semantic_stage_unguided(planted):
    from musiclm_jax.pipeline import MusicLM

    lm = MusicLM.from_pretrained(planted[2]["musiclm"], load_semantic_tokenizer=False)
    gen = lm.generate_full(CAPTIONS[:2], 1.0, seed=0, progress=False)
    assert gen.waves.shape[0] == 2 and np.isfinite(gen.waves).all()
    base = MusicLM.from_pretrained(BASE, load_semantic_tokenizer=False).generate_full(CAPTIONS[:2], 1.0, seed=0,
                                                                                     progress=False)
    # what the policy learned shows in generation
    assert planted_share(gen.tokens["semantic"]).mean() > planted_share(base.tokens["semantic"]).mean() + 0.1


def test_compare_pairs_every_model_with_the_first(planted, tmp_path, capsys):
    prompts = tmp_path / "held_out.txt"
    prompts.write_text("\n".join(CAPTIONS[3:5]) + "\n")
    out = tmp_path / "compare.json"
    argv = ["finetune", "compare", "--models", f"base={BASE}:unguided", f"rl={planted[2]['musiclm']}", "--prompts",
            str(prompts), "--out", str(out), "--rewards", "pulse", "mulan", "--seconds", "1", "--batch_size", "2"]
    assert cli.main(argv) == 0
    result = json.load(open(out))
    assert result["reference"] == "base" and result["prompts"] == 2 and result["samples_per_prompt"] == 2
    base, tuned = result["models"]["base"], result["models"]["rl"]
    assert set(base) == set(tuned) == {"pulse", "mulan", "diversity"} and "diff" not in base["mulan"]
    for r in tuned:
        d = np.asarray(result["per_prompt"]["rl"][r]) - np.asarray(result["per_prompt"]["base"][r])
        assert tuned[r]["diff"] == pytest.approx(d.mean())
    assert all(-1.0 <= v <= 1.0 for v in result["per_prompt"]["rl"]["diversity"])
    assert "rl: pulse" in capsys.readouterr().out
    assert cli.main(argv[:3] + ["weights/musiclm"] + argv[5:]) == 2
    assert "NAME=DIR" in capsys.readouterr().err


def test_cli_rl_on_audio_rewards_and_bad_input(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CAPTIONS[:2]) + "\n")
    out = tmp_path / "rl"
    args = ["finetune", "rl", "--model_dir", BASE, "--prompts", str(prompts), "--out_dir", str(out),
            "--rewards", "key", "pulse", "--rounds", "1", "--prompts_per_round", "2", "--samples_per_prompt", "4",
            "--steps_per_round", "1", "--batch_size", "8", "--seconds", "1"]
    assert cli.main(args + ["--gin.finetune_rl.kl_weight=0.2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(printed["mean_reward_by_round"]) == 1 and np.isfinite(printed["mean_reward_by_round"][0])
    # gin configures the job (gin/finetune/rl_semantic.gin, the flags and --gin.K=V): the run records what it used
    operative = (out / "train" / "operative_config.gin").read_text()
    assert "finetune_rl.kl_weight = 0.2" in operative and "finetune_rl.rounds = 1" in operative
    assert json.load(open(out / "musiclm" / "rl.json"))["kl_weight"] == 0.2
    assert (out / "train" / "tb").is_dir()   # TensorBoard, like the other trainings
    with np.load(out / "rollouts" / "round_0.npz") as f:
        assert f["rewards"].shape == (8,) and np.isfinite(f["rewards"]).all()   # key + pulse: every row scored
    assert cli.main(args[:-2] + ["--seconds", "1", "--weights", "1"]) == 2
    assert "one each" in capsys.readouterr().err
    bad = ["finetune", "rl", "--model_dir", str(tmp_path), "--prompts", str(prompts), "--out_dir", str(out)]
    assert cli.main(bad) == 2 and "not an exported MusicLM" in capsys.readouterr().err
    assert cli.main(args[:8] + ["--samples_per_prompt", "1"]) == 2
    assert "samples_per_prompt >= 2" in capsys.readouterr().err


def test_the_distillation_term_is_the_kl_to_the_guided_teacher():
    from musiclm_jax.finetune.distill import kl_per_position

    layout, cfg, (student, teacher), inputs, targets = _two_tiny_lms()
    family = rl.PolicyGradient(cfg, kl_weight=0.0, reward_weight=0.0, distill_weight=2.0, temperature=0.5)
    logp = lambda m: masked_log_softmax(family._forward(m, {"inputs": inputs, "targets": targets},  # noqa: E731
                                                        deterministic=True)[0] / 0.5, layout.logit_mask())
    batch = {"inputs": inputs, "targets": targets, "advantages": jnp.asarray([1.0, -1.0, 0.0]),
             "ref_logprobs": logp(student), "teacher_logprobs": logp(student)}
    loss, _, metrics = family.loss({"model": student}, batch, jax.random.key(0))
    assert abs(float(loss)) < 1e-4 and abs(float(metrics["distill_kl"])) < 1e-4   # the advantages weigh 0
    batch["teacher_logprobs"] = logp(teacher)
    loss, _, metrics = family.loss({"model": student}, batch, jax.random.key(0))
    s_logits = family._forward(student, batch, deterministic=True)[0]
    want = float(jnp.sum(kl_per_position(batch["teacher_logprobs"], s_logits / 0.5)))
    assert float(metrics["distill_kl"]) == pytest.approx(want, rel=1e-4) and want > 0
    assert float(loss) == pytest.approx(2.0 * want, rel=1e-4)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        family.loss({"model": student}, {k: v for k, v in batch.items() if k != "teacher_logprobs"},
                    jax.random.key(0))
    with pytest.raises(ValueError, match="distill_weight >= 0"):
        rl.PolicyGradient(cfg, distill_weight=-1.0)


def test_on_policy_distillation_moves_the_unguided_student_toward_the_guided_base(tmp_path):
    from musiclm_jax.finetune import distill
    from musiclm_jax.pipeline import MusicLM, load_stage_lm

    lm = MusicLM.from_pretrained(BASE, load_semantic_tokenizer=False)
    # measured on the guided base's own samples (not the student's, which it trains on) and its distributions there
    held = distill.make_distill_set(lm, CAPTIONS[:4] * 2, seconds=1.0, guidance_scale=3.0, batch_size=8)
    zero = lambda targets, prompts: np.zeros(len(prompts), np.float32)   # noqa: E731  (no reward: distillation only)
    out = rl.finetune_rl(BASE, CAPTIONS[:4], str(tmp_path), score=zero, rounds=3, prompts_per_round=4,
                         samples_per_prompt=2, steps_per_round=4, batch_size=8, learning_rate=3e-4, kl_weight=0.0,
                         distill_weight=1.0, teacher_guidance=3.0, seconds=1.0)
    with np.load(tmp_path / "rollouts" / "round_0.npz") as f:
        assert f["teacher_logprobs"].shape == f["ref_logprobs"].shape
    cfg = lm.models["semantic"].cfg
    family = distill.GuidanceDistillation(cfg, aligned=lm.layouts["semantic"] if cfg.aligned_inputs else None)
    rows = np.arange(len(held["targets"]))
    before = distill.held_out_kl(family, lm.models["semantic"], held, rows, batch_size=8)["kl"]
    after = distill.held_out_kl(family, load_stage_lm(f"{out['musiclm']}/stage_semantic"), held, rows,
                                batch_size=8)["kl"]
    assert after < 0.8 * before, (before, after)   # measured: 0.102 -> 0.057
    assert out["report"]["distill_weight"] == 1.0 and out["report"]["teacher_guidance"] == 3.0
    # rollouts of a run without the teacher cannot feed a distillation run
    with pytest.raises(ValueError, match="teacher_guidance 1"):
        rl.finetune_rl(BASE, CAPTIONS[:4], str(tmp_path / "x"), score=zero, distill_weight=1.0, teacher_guidance=1.0)


def test_cli_diversity_rewarded_distillation(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CAPTIONS[:2]) + "\n")
    out = tmp_path / "div"
    args = ["finetune", "rl", "--model_dir", BASE, "--prompts", str(prompts), "--out_dir", str(out),
            "--rewards", "diversity", "--gin_file", "finetune/distill_diversity_semantic.gin", "--rounds", "1",
            "--prompts_per_round", "2", "--samples_per_prompt", "4", "--steps_per_round", "1", "--batch_size", "8",
            "--seconds", "1"]
    assert cli.main(args) == 0
    capsys.readouterr()
    report = json.load(open(out / "musiclm" / "rl.json"))
    assert report["distill_weight"] == 1.0 and report["kl_weight"] == 0.0 and report["teacher_guidance"] == 3.0
    with np.load(out / "rollouts" / "round_0.npz") as f:
        # every sample is scored against the 3 others of its prompt: minus a mean cosine
        assert f["rewards"].shape == (8,) and np.all((f["rewards"] >= -1.0001) & (f["rewards"] <= 1.0001))
        assert "teacher_logprobs" in f.files
    metrics = [json.loads(line) for line in open(out / "train" / "metrics.jsonl")]
    assert np.isfinite(metrics[-1]["distill_kl"])
