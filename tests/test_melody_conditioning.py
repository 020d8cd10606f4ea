"""Melody conditioning (issue 17): melody tokens in the semantic stage's prefix (layout round trip, ids in range,
"no melody" as UNCOND), their own conditioning dropout, the optional fourth tokenizer, a tiny stage LM that learns
to read them, generation with a melody (deterministic by seed, the melody changes the tokens), the melody
adherence metric, and one-line errors for bad melodies."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax import pipeline
from musiclm_jax.lm import stages as st
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.lm import transformer as tr
from musiclm_jax.train.data import ResumableBatches

SR = 16000


@pytest.fixture(scope="module")
def melody_lm():
    return pipeline.tiny_random(0, melody=True)


def _tone_melody(seconds, notes=(60, 64, 67, 72), sr=SR):
    """A plain sine melody: each note for an equal share of the clip."""
    n = int(seconds * sr)
    f = np.repeat([440.0 * 2 ** ((m - 69) / 12) for m in notes], -(-n // len(notes)))[:n]
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / sr)).astype(np.float32)


def test_melody_layout_round_trips_with_ids_in_range():
    sem, coarse = st.StageLayout("semantic", st.TINY_MELODY), st.StageLayout("coarse", st.TINY_MELODY)
    plain, plain_coarse = st.StageLayout("semantic", st.TINY), st.StageLayout("coarse", st.TINY)
    # melody streams come after a stage's others: no MuLan, semantic or acoustic id moves
    assert {k: v for k, v in sem.streams.items() if not k.startswith("melody")} == plain.streams
    assert {k: v for k, v in coarse.streams.items() if not k.startswith("melody")} == plain_coarse.streams
    assert coarse.has_melody and not st.StageLayout("fine", st.TINY_MELODY).has_melody
    semantic_only = dataclasses.replace(st.TINY_MELODY, melody_stages=["semantic"])   # a list, as musiclm.json has
    assert semantic_only.melody_stages == ("semantic",) and hash(semantic_only)
    assert st.StageLayout("coarse", semantic_only).streams == plain_coarse.streams
    assert not st.StageLayout("coarse", semantic_only).has_melody
    r = np.random.default_rng(0)
    m = r.integers(0, 8, (3, 2))
    mel = r.integers(0, 8, (3, 5, 2))
    mel[1, 2:] = -1   # "no melody" from frame 2 on
    s = r.integers(0, 16, (3, 7))
    inputs, targets = sem.build(mulan=m, semantic=s, melody=mel)
    assert inputs.shape == (3, 2 + 5 * 2 + 1) and inputs[0, -1] == st.SEP
    part = inputs[:, 2:-1]   # [M | melody | SEP]
    lo, hi = sem.melody_ids()
    assert (lo, hi) == (sem.streams["melody0"][0], sem.streams["melody1"][1]) and part.shape == (3, 10)
    for q in range(2):
        lo, hi = sem.streams[f"melody{q}"]
        ids = part[:, q::2]
        present = mel[..., q] >= 0
        assert ((ids[present] >= lo) & (ids[present] < hi)).all()
        np.testing.assert_array_equal(ids[present] - lo, mel[..., q][present])
        assert (ids[~present] == st.UNCOND).all()
    assert inputs.max() < sem.vocab_size and sem.num_ids == plain.num_ids + 16
    np.testing.assert_array_equal(sem.targets_to_codes(targets), s)
    # guidance drops the text only; the melody stays in both branches
    un = sem.uncond_inputs(inputs)
    assert (un[:, :2] == st.UNCOND).all() and (un[:, 2:] == inputs[:, 2:]).all()
    np.testing.assert_array_equal(np.asarray(sem.encode_melody(jnp.asarray(mel))), sem.encode_melody(mel))
    with pytest.raises(ValueError, match="melody-conditioned: pass melody"):
        sem.build_inputs(mulan=m)
    with pytest.raises(ValueError, match="takes no melody"):
        plain.build_inputs(mulan=m, melody=mel)
    with pytest.raises(ValueError, match=r"melody ids must be in \[0, 8\)"):
        sem.build_inputs(mulan=m, melody=mel + 8)
    with pytest.raises(ValueError, match="both be 0"):
        st.TokenSizes(melody_levels=2)
    with pytest.raises(ValueError, match="melody_stages"):
        st.TokenSizes(melody_levels=2, melody_codes=8, melody_stages=("fine",))
    # the coarse stage: [M | S | melody | SEP], so the semantic tokens keep their positions (time-aligned reading)
    a = r.integers(0, 16, (3, 7, 4))
    c_in, c_tg = coarse.build(mulan=m, semantic=s, acoustic=a, melody=mel)
    p_in, p_tg = plain_coarse.build(mulan=m, semantic=s, acoustic=a)
    np.testing.assert_array_equal(c_in[:, :2 + 7], p_in[:, :-1])
    flat, levels = mel.reshape(3, -1), np.tile(np.arange(2), 5)
    np.testing.assert_array_equal(np.where(flat >= 0, c_in[:, 2 + 7:-1] - coarse.offset("melody0") - levels * 8, -1),
                                  flat)
    assert (c_in[:, 2 + 7:-1][flat < 0] == st.UNCOND).all()
    np.testing.assert_array_equal(c_tg, p_tg)
    with pytest.raises(ValueError, match="coarse stage is melody-conditioned"):
        coarse.build(mulan=m, semantic=s, acoustic=a)
    with pytest.raises(ValueError, match="not supported"):
        coarse.aligned_ids(c_in, 8)


def test_melody_dropout_is_its_own_and_spares_the_text():
    layout = st.StageLayout("semantic", st.TINY_MELODY)
    cfg = tr.preset("tiny", vocab_size=layout.vocab_size, max_len=64, dtype="float32")
    r = np.random.default_rng(0)
    inputs, targets = layout.build(mulan=r.integers(0, 8, (256, 2)), semantic=r.integers(0, 16, (256, 4)),
                                   melody=r.integers(0, 8, (256, 3, 2)))
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
    fam = TokenLM(cfg, uncond_prob=0.2, uncond_span=layout.cond_span(), uncond_id=st.UNCOND, melody_prob=0.5,
                  melody_ids=layout.melody_ids())
    out = np.asarray(fam.drop_conditioning(batch, jax.random.key(0))["inputs"])
    text_dropped = (out[:, :2] == st.UNCOND).all(1)
    melody_dropped = (out[:, 2:-1] == st.UNCOND).all(1)
    changed = out != inputs
    assert not changed[:, -1].any()                                  # SEP stays
    assert ((out[:, :2] == st.UNCOND) | ~changed[:, :2]).all()       # rows drop whole spans, nothing else
    assert 0.1 < text_dropped.mean() < 0.3 and 0.4 < melody_dropped.mean() < 0.6
    # independent draws: both dropped about 0.2 x 0.5 of the time
    assert abs((text_dropped & melody_dropped).mean() - text_dropped.mean() * melody_dropped.mean()) < 0.05
    # without melody dropout the text dropout is the one it always was (same key, same rows)
    text_only = TokenLM(cfg, uncond_prob=0.2, uncond_span=layout.cond_span(), uncond_id=st.UNCOND)
    np.testing.assert_array_equal(np.asarray(text_only.drop_conditioning(batch, jax.random.key(0))["inputs"])[:, :2],
                                  out[:, :2])
    with pytest.raises(ValueError, match="melody_ids"):
        TokenLM(cfg, melody_prob=0.3)
    # the coarse stage's melody sits after its semantic tokens: found by id, the semantic tokens untouched
    coarse = st.StageLayout("coarse", st.TINY_MELODY)
    c_in, _ = coarse.build(mulan=r.integers(0, 8, (256, 2)), semantic=r.integers(0, 16, (256, 4)),
                           acoustic=r.integers(0, 16, (256, 4, 4)), melody=r.integers(0, 8, (256, 3, 2)))
    c_fam = TokenLM(tr.preset("tiny", vocab_size=coarse.vocab_size, max_len=64, dtype="float32"),
                    uncond_id=st.UNCOND, melody_prob=0.5, melody_ids=coarse.melody_ids())
    c_out = np.asarray(c_fam.drop_conditioning({"inputs": jnp.asarray(c_in)}, jax.random.key(0))["inputs"])
    assert (c_out[:, :6] == c_in[:, :6]).all() and (c_out[:, -1] == st.SEP).all()
    dropped = (c_out[:, 6:-1] == st.UNCOND).all(1)
    assert 0.4 < dropped.mean() < 0.6 and ((c_out[:, 6:-1] == c_in[:, 6:-1]).all(1) | dropped).all()
    packed = {"decoder_target_tokens": jnp.ones((2, 8), jnp.int32)}
    with pytest.raises(ValueError, match="unpacked"):
        fam.drop_conditioning(packed, jax.random.key(0))


def test_tokenizers_make_a_melody_stream_at_two_hertz():
    from musiclm_jax import tokenizers as tok_lib

    plain = tok_lib.Tokenizers.get(tok_lib.TokenizerSpec.tiny())
    toks = tok_lib.Tokenizers.get(tok_lib.TokenizerSpec.tiny(melody=True))
    wave = _tone_melody(3.0)
    out = toks.tokenize(wave, SR)
    assert out["melody_tokens"].shape == (6, 2) and out["melody_tokens"].dtype == np.int32
    assert 0 <= out["melody_tokens"].min() and out["melody_tokens"].max() < 8
    assert "melody_tokens" not in plain.tokenize(wave, SR)
    assert set(toks.fingerprints()) == {"codec", "semantic", "mulan", "melody"}
    assert toks.describe()["melody"] == {"frame_rate": 2.0, "levels": 2, "codebook_size": 8}
    for k in ("codec", "semantic", "mulan"):   # the three others are the same checkpoints
        assert toks.fingerprints()[k] == plain.fingerprints()[k]
    spec = tok_lib.TokenizerSpec.tiny(melody=True)
    assert spec.to_env()[tok_lib.MELODY_ENV] == "random:0" and tok_lib.MELODY_ENV not in \
        tok_lib.TokenizerSpec.tiny().to_env()
    from musiclm_jax.melody.api import frame_windows
    cfg = toks.melody.cfg
    w = frame_windows(wave, cfg)
    assert w.shape == (6, cfg.window_samples)
    # window i is centred at (i + 0.5) * stride: its middle sample is the clip's sample at that time
    i = 3
    np.testing.assert_allclose(w[i, cfg.window_samples // 2], wave[int((i + 0.5) * cfg.stride_samples)], atol=1e-7)


class _MelodyData(ResumableBatches):
    """Semantic-stage batches whose targets are the melody tokens (mod 16): learnable only by reading them."""

    def __init__(self, batch_size, seed=0, **_):
        self.batch_size, self.seed = batch_size, seed
        self.layout = st.StageLayout("semantic", st.TINY_MELODY)

    def make_batch(self, position):
        r = np.random.default_rng((self.seed, position))
        m = r.integers(0, 8, (self.batch_size, 2))
        mel = r.integers(0, 8, (self.batch_size, 4, 2))
        s = mel[..., 0] * 2 + mel[..., 1] % 2   # target i from melody frame i: no shortcut through the targets
        inputs, targets = self.layout.build(mulan=m, semantic=s, melody=mel)
        return {"inputs": inputs, "targets": targets}


def test_tiny_melody_stage_learns_to_read_the_melody(tmp_path):
    import gin

    from musiclm_jax.train import gin_utils
    from musiclm_jax.train.trainer import train

    gin.clear_config()
    try:
        gin_utils.parse_config(["experiments/stage_semantic_tiny_melody.gin"],
                               [f"MODEL_DIR = '{tmp_path}'", "MELODY_PROB = 0.1"])
        train(dataset=lambda split, **kw: _MelodyData(**kw), eval_dataset=None, num_steps=150, batch_size=16,
              checkpoint_period=150, log_period=10, async_checkpoints=False, progress=False, tensorboard=False)
    finally:
        gin.clear_config()
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    # below chance (log 16 = 2.77 nats: text tokens and earlier targets say nothing): it reads the melody
    assert losses[-1] < 0.85 * np.log(16) and losses[-1] < 0.6 * losses[0]
    model = pipeline.load_stage_lm(str(tmp_path))
    batch = next(_MelodyData(32, seed=99))
    layout = st.StageLayout("semantic", st.TINY_MELODY)

    def accuracy(inputs):
        x = jnp.asarray(np.concatenate([inputs, batch["targets"][:, :-1]], 1))
        logits = np.asarray(model(x, prefix_len=jnp.full((32,), inputs.shape[1])))[:, inputs.shape[1] - 1:]
        return float((logits.argmax(-1) == batch["targets"]).mean())
    no_melody = batch["inputs"].copy()
    lo, hi = layout.melody_ids()
    no_melody[(no_melody >= lo) & (no_melody < hi)] = st.UNCOND
    assert accuracy(batch["inputs"]) > accuracy(no_melody) + 0.2


def test_generation_with_a_melody_is_seeded_and_follows_the_tokens(melody_lm):
    lm = melody_lm
    assert lm.sizes.has_melody and lm.melody is not None
    a, b = _tone_melody(1.0), _tone_melody(1.0, notes=(50, 53, 57, 45))
    kw = dict(duration_s=0.4, seed=3, progress=False, melody_sample_rate=SR)
    g1 = lm.generate_full(["x"], melody=a, **kw)
    g2 = lm.generate_full(["x"], melody=a, **kw)
    np.testing.assert_array_equal(g1.waves, g2.waves)
    tokens = lm.melody_tokens([a, b, None], SR, 3)
    assert tokens.shape == (3, 2, 2) and (tokens[2] == -1).all() and (tokens[:2] >= 0).all()
    g3 = lm.generate_full(["x", "x", "x"], melody=[a, b, None], **{**kw, "seed": [3, 3, 3]})
    np.testing.assert_array_equal(g3.tokens["semantic"][0], g1.tokens["semantic"][0])   # row 0 as alone
    # the semantic stage reads the melody tokens: same text and seed, other melody tokens -> other tokens
    mulan = np.repeat(lm.mulan.tokens_from_text(["x"]), 3, axis=0)
    mel = np.stack([np.zeros((2, 2)), np.full((2, 2), 7), np.full((2, 2), -1)]).astype(np.int32)
    g4 = lm.generate_from_tokens(mulan, 0.4, melody=mel, seed=[3, 3, 3], progress=False)
    sem = g4.tokens["semantic"][:, 0]
    assert not np.array_equal(sem[0], sem[1]) and not np.array_equal(sem[0], sem[2])
    # the coarse stage reads them too: the same semantic tokens, other melody tokens -> other coarse codes
    fixed = np.repeat(g4.tokens["semantic"][:1, 0], 3, axis=0)
    g5 = lm.generate_from_tokens(mulan, 0.4, semantic=fixed, melody=mel, seed=[3, 3, 3], progress=False)
    assert not np.array_equal(g5.tokens["coarse"][0], g5.tokens["coarse"][1])
    text_only = lm.generate_full(["x"], duration_s=0.4, seed=3, progress=False)
    assert np.isfinite(text_only.waves).all() and text_only.waves.shape == g1.waves.shape


@pytest.mark.parametrize("wave, sr, match", [
    (np.zeros(SR * 2, np.float32), SR, "silent"),
    (_tone_melody(0.3), SR, "needs at least 1 s"),
    (np.full(SR * 2, np.nan, np.float32), SR, "NaN"),
    (np.zeros((2, SR), np.float32), SR, "mono"),
    (_tone_melody(1.0), None, "melody_sample_rate"),
])
def test_bad_melodies_give_one_line_errors(melody_lm, wave, sr, match):
    lm = melody_lm
    with pytest.raises(ValueError, match=match) as e:
        lm.generate(["x"], 0.4, melody=wave, melody_sample_rate=sr, progress=False)
    assert "\n" not in str(e.value)


def test_melody_on_a_text_only_model_and_the_cli_errors(tmp_path, capsys):
    from musiclm_jax import cli
    from musiclm_jax.audio.io import write_wav

    with pytest.raises(ValueError, match="not melody-conditioned"):
        pipeline.tiny_random(0).generate(["x"], 0.4, melody=_tone_melody(1.0), melody_sample_rate=SR)
    hum = write_wav(str(tmp_path / "hum.wav"), _tone_melody(1.2), SR)
    out = tmp_path / "song.wav"
    rc = cli.main(["generate", "--prompt", "a calm piano", "--duration", "0.4", "--out", str(out), "--melody", hum,
                   "--random_init", "--tiny", "--no_progress"])
    assert rc == 0 and out.exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["melody"] == hum
    (tmp_path / "broken.wav").write_bytes(b"RIFF1234WAVEfmt garbage")
    for path, match in ((str(tmp_path / "missing.wav"), "file not found"), (str(tmp_path / "broken.wav"), "broken.wav")):
        rc = cli.main(["generate", "--prompt", "x", "--duration", "0.4", "--out", str(out), "--melody", path,
                       "--random_init", "--tiny", "--no_progress"])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and match in err and len(err.splitlines()) == 1, err


def test_chroma_match_keeps_the_tune_and_its_key():
    from musiclm_jax.eval.melody import chroma_match

    tune = _tone_melody(2.0)
    assert chroma_match(tune, tune, SR) == 1.0
    louder_with_noise = 2 * tune + 0.01 * np.random.default_rng(0).normal(size=tune.shape).astype(np.float32)
    assert chroma_match(tune, louder_with_noise, SR) > 0.9
    assert chroma_match(tune, _tone_melody(2.0, notes=(63, 67, 70, 75)), SR) < 0.2   # up a minor third
    assert np.isnan(chroma_match(np.zeros(SR, np.float32), tune, SR))


def test_evaluate_melody_reports_every_arm_with_paired_differences(melody_lm):
    from musiclm_jax.eval.melody import evaluate_melody

    lines = [{"name": f"l{i}", "melody": _tone_melody(1.0, notes=n), "sample_rate": SR, "caption": "a calm piano",
              "real": _tone_melody(1.0, notes=n), "bpm": 100, "key": "C", "mode": "major"}
             for i, n in enumerate([(60, 64, 67, 72), (50, 53, 57, 45), (62, 65, 69, 74)])]
    report, waves = evaluate_melody(melody_lm, lines, seconds=0.5, batch_size=2)
    c = report["chroma_match"]
    assert set(c) == {"melody", "text", "random", "real"} and c["real"]["mean"] > 0.9
    assert waves["melody"].shape == (3, int(0.5 * melody_lm.sample_rate))
    assert report["melody_minus_text"]["n"] == 3 and set(report["text_adherence"]) == {"tempo", "key", "mulan"}
    mulan = report["text_adherence"]["mulan"]
    assert mulan["melody"]["n"] == mulan["text"]["n"] == 3 and -1 <= mulan["melody"]["mean"] <= 1
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_melody(melody_lm, lines[:1], seconds=0.5)


def test_warm_start_grows_a_trained_stage_vocabulary_for_melody_tokens(tmp_path):
    """A trained text-only coarse stage starts a melody-conditioned one (`train.init_grow`): every weight is the trained
    one where the shapes overlap; only the new melody ids' rows keep their fresh initialisation."""
    from musiclm_jax.train.data import SyntheticTokens
    from musiclm_jax.train.trainer import train

    plain, melody = st.StageLayout("coarse", st.TINY), st.StageLayout("coarse", st.TINY_MELODY)
    assert melody.vocab_size > plain.vocab_size
    family = lambda layout: TokenLM(tr.preset("tiny", vocab_size=layout.vocab_size, max_len=32,  # noqa: E731
                                              dtype="float32"))
    data = lambda split, **kw: SyntheticTokens(vocab_size=plain.vocab_size, length=16, split=split, **kw)  # noqa: E731
    opts = dict(dataset=data, eval_dataset=None, batch_size=8, async_checkpoints=False, progress=False,
                tensorboard=False, checkpoint_period=2)
    first = train(family(plain), model_dir=str(tmp_path / "plain"), num_steps=2, **opts)
    with pytest.raises(ValueError, match="cannot warm-start"):
        train(family(melody), model_dir=str(tmp_path / "strict"), num_steps=2, max_steps_this_run=0,
              init_from=str(tmp_path / "plain"), **opts)
    fresh = train(family(melody), model_dir=str(tmp_path / "fresh"), num_steps=2, max_steps_this_run=0, **opts)
    warm = train(family(melody), model_dir=str(tmp_path / "grown"), num_steps=2, max_steps_this_run=0,
                 init_from=str(tmp_path / "plain"), init_grow=True, **opts)
    old, new, init = (jax.device_get(r["state"]["params"]) for r in (first, warm, fresh))
    grown = 0
    for a, b, c in zip(jax.tree.leaves(old), jax.tree.leaves(new), jax.tree.leaves(init)):
        a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
        overlap = tuple(slice(0, n) for n in a.shape)
        np.testing.assert_array_equal(b[overlap], a)
        if a.shape != b.shape:
            grown += 1
            rest = np.ones(b.shape, bool)
            rest[overlap] = False
            np.testing.assert_array_equal(b[rest], c[rest])
    assert grown >= 1
