"""Tempo conditioning of the semantic stage: prompt parsing, tempo tokens and beat phases, learning, the pipeline."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax.lm import decoding as dec
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.tempo import bpm_from_text, check_bpm
from tiny_stage import heldout_accuracy, train_tiny_stage, trained_model

SEM = st.StageLayout("semantic", st.TINY_BEAT)


@pytest.mark.parametrize("text,bpm", [
    ("a funk groove at 96 bpm", 96.0), ("Rock, 120 beats per minute, in E minor", 120.0),
    ("tempo: 140, ska with horns", 140.0), ("played around 100-BPM", 100.0), ("the bpm is about 84", 84.0),
    ("an Allegro string quartet", 132.0), ("largo, for solo cello", 50.0),
    ("a calm piano piece from the 1990s", None), ("2 guitars and 808 drums", None), ("at 1000 bpm", None)])
def test_bpm_from_text_reads_only_a_stated_tempo(text, bpm):
    assert bpm_from_text(text) == bpm


def test_check_bpm_gives_one_value_per_prompt_and_one_line_errors():
    assert check_bpm(120, 2) == [120.0, 120.0] and check_bpm([90, None], 2) == [90.0, None]
    for bad, match in ((500, r"in \[30, 300\]"), ("fast", "a number of beats"), ([90], "1 values for 2")):
        with pytest.raises(ValueError, match=match):
            check_bpm(bad, 2)


def test_tempo_tokens_and_beat_phases():
    tempo = st.tempo_of([120.0, 0.0], [0.25, 1.0], 25.0)   # 12.5 frames a beat, start half a beat in; unknown
    np.testing.assert_allclose(tempo, [[12.5, 0.5], [0.0, 0.0]])
    mulan = np.zeros((2, st.TINY.mulan_levels), np.int32)
    semantic = np.ones((2, 30), np.int32)
    inputs, targets = SEM.build(mulan=mulan, semantic=semantic, tempo=tempo)
    assert inputs.shape == (2, st.TINY.mulan_levels + 3) and inputs[0, -1] == st.SEP
    lo, hi = SEM.tempo_ids()
    assert lo <= inputs[0, -3] < inputs[0, -2] < hi and (inputs[1, -3:-1] == st.UNCOND).all()
    ids = SEM.aligned_ids(inputs, targets.shape[1])
    p = inputs.shape[1]
    assert ids.shape == (2, p + targets.shape[1] - 1) and (ids[:, :p - 1] == -1).all() and (ids[1] == -1).all()
    # Target j sits at phase 0.5 + j / 12.5 beats (up to the tokens' quantisation): 8 phases per beat.
    j = np.arange(targets.shape[1])
    want = np.floor(np.mod(0.5 + j / 12.5, 1.0) * 8).astype(int)
    assert np.mean(ids[0, p - 1:] == want) > 0.9
    np.testing.assert_array_equal(np.asarray(SEM.aligned_ids(jnp.asarray(inputs), targets.shape[1])), ids)
    # Guidance drops the MuLan tokens only: both branches hear the same beat.
    np.testing.assert_array_equal(SEM.uncond_inputs(inputs)[:, -3:], inputs[:, -3:])
    # The other stages and the tiny layout without a tempo are untouched.
    assert st.StageLayout("coarse", st.TINY_BEAT).vocab_size == st.StageLayout("coarse", st.TINY).vocab_size
    assert st.StageLayout("semantic", st.TINY).build_inputs(mulan=mulan).shape == (2, st.TINY.mulan_levels + 1)
    assert st.stage_aligned("semantic", st.TINY_BEAT, enabled=True) == SEM
    assert st.stage_tempo_ids("semantic", st.TINY_BEAT) == (lo, hi) and st.stage_tempo_ids("coarse", st.TINY_BEAT) == (0, 0)
    with pytest.raises(ValueError, match="takes no tempo"):
        st.StageLayout("semantic", st.TINY).build_inputs(mulan=mulan, tempo=tempo)
    with pytest.raises(ValueError, match=r"tempo must be \[batch, 2\]"):
        SEM.build_inputs(mulan=mulan, tempo=tempo[:, 0])
    with pytest.raises(ValueError, match="beat_phases must be an int >= 0"):
        st.TokenSizes(beat_phases=-1)


def test_to_stage_turns_the_stated_bpm_and_the_crop_start_into_tempo_tokens():
    import tensorflow as tf

    from musiclm_jax.tasks import preprocessors as pp

    ex = {"mulan_tokens": np.zeros((st.TINY.mulan_levels,), np.int32), "semantic_tokens": np.arange(50) % 16,
          "acoustic_tokens": np.zeros((100, st.TINY.codec_levels), np.int32), "crop_start_seconds": np.float32(0.3)}
    with_bpm = dict(ex, bpm=np.float32(100.0))
    for example, tempo in ((with_bpm, st.tempo_of(100.0, 0.3, 25.0)), (ex, SEM.no_tempo(1))):
        ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in example.items()})
        out = next(pp.to_stage(ds, stage="semantic", sizes=st.TINY_BEAT, semantic_rate=25.0).as_numpy_iterator())
        np.testing.assert_array_equal(out["inputs"][-3:-1], SEM.encode_tempo(tempo)[0])


def test_tempo_dropout_forgets_the_tempo_of_some_rows_only():
    lo, hi = SEM.tempo_ids()
    cfg = tr.preset("tiny", vocab_size=SEM.vocab_size, dtype="float32", max_len=64, aligned_inputs=True)
    family = TokenLM(cfg, aligned=SEM, tempo_prob=0.5, tempo_ids=(lo, hi), uncond_id=st.UNCOND)
    mulan = np.ones((64, st.TINY.mulan_levels), np.int32)
    inputs, targets = SEM.build(mulan=mulan, semantic=np.ones((64, 8), np.int32),
                                tempo=st.tempo_of(np.full(64, 120.0), 0.0, 25.0))
    out = np.asarray(family.drop_conditioning({"inputs": jnp.asarray(inputs), "targets": targets},
                                              jax.random.key(0))["inputs"])
    dropped = (out[:, -3:-1] == st.UNCOND).all(1)
    assert 10 < dropped.sum() < 54 and (out[:, :-3] == inputs[:, :-3]).all()
    with pytest.raises(ValueError, match="tempo_ids"):
        TokenLM(cfg, aligned=SEM, tempo_prob=0.5)


ON, OFF = 1, 2   # planted semantic tokens: an onset on each beat, nothing between


def _beat_batch(b, t, seed):
    """Semantic tokens with an onset on every beat, each row at its own tempo (3-8 frames a beat) and start phase."""
    rng = np.random.default_rng(seed)
    frames = rng.uniform(3.0, 8.0, b)
    start = rng.uniform(0.0, 1.0, b)
    tempo = np.stack([frames, start], 1).astype(np.float32)
    inputs = SEM.build_inputs(mulan=rng.integers(0, st.TINY.mulan_codes, (b, st.TINY.mulan_levels)), tempo=tempo)
    phase = SEM.aligned_ids(inputs, t)[:, inputs.shape[1] - 1:]   # the beat phase each frame is given
    targets = SEM.encode_semantic(np.where(phase == 0, ON, OFF))
    return inputs, targets


def test_beat_phases_teach_the_stage_where_the_beats_fall_and_decoding_follows_the_tempo():
    trainer, state = train_tiny_stage(SEM, lambda i: _beat_batch(16, 24, seed=i), steps=60, lr=1e-2)
    accuracy = heldout_accuracy(trainer, state, *_beat_batch(32, 24, seed=10_000))
    print(f"\nheld-out accuracy of onset / no onset after 60 steps: {accuracy:.3f}")
    assert accuracy > 0.95
    # Sampling with the KV cache: the onsets come every beat of the tempo asked for.
    model = trained_model(trainer, state)
    for frames in (4.0, 6.0):
        tempo = np.asarray([[frames, 0.0]], np.float32)
        prompt = SEM.build_inputs(mulan=np.zeros((1, st.TINY.mulan_levels), np.int32), tempo=tempo)
        new, _ = dec.sample(model, jnp.asarray(prompt), max_new_tokens=24, rng=jax.random.key(0), temperature=0.0,
                            aligned=jnp.asarray(SEM.aligned_ids(prompt, 24)), logit_mask_fn=SEM.logit_mask())
        onsets = np.flatnonzero(SEM.targets_to_codes(np.asarray(new))[0] == ON)
        assert len(onsets) >= 3 and np.allclose(np.diff(onsets), frames, atol=1), (frames, onsets)


def test_pipeline_reads_the_prompt_tempo_or_the_one_given():
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0, sizes=st.TINY_BEAT)
    table = lm.models["semantic"].aligned_embed
    table.set_value(jax.random.normal(jax.random.key(1), table[...].shape, table[...].dtype))  # as if trained
    plain_lm = tiny_random(seed=0)
    assert lm.has_tempo and not plain_lm.has_tempo
    prompt = ["a calm piano waltz at 90 BPM"]
    gen = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False)
    assert gen.bpm == [90.0]
    same = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, bpm=90)
    np.testing.assert_array_equal(gen.tokens["semantic"], same.tokens["semantic"])
    other = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, bpm=150)
    assert (other.tokens["semantic"] != gen.tokens["semantic"]).any() and other.bpm == [150.0]
    assert lm.generate_full(["a calm piano waltz"], duration_s=0.2, progress=False).bpm == [None]
    mulan = lm._text_tokens(prompt)
    assert lm.generate_from_tokens(mulan, 0.2, bpm=[120], progress=False).bpm == [120.0]
    with pytest.raises(ValueError, match="no tempo conditioning"):
        plain_lm.generate_full(prompt, duration_s=0.2, bpm=120, progress=False)
    with pytest.raises(ValueError, match=r"bpm must be in \[30, 300\]"):
        lm.generate_full(prompt, duration_s=0.2, bpm=5, progress=False)
    with pytest.raises(ValueError, match="beat_phases / melody_aligned and the semantic LM disagree"):
        plain = tr.Transformer(dataclasses.replace(lm.models["semantic"].cfg, aligned_inputs=False), rngs=nnx.Rngs(0))
        type(lm)(mulan=lm.mulan, codec=lm.codec, semantic_lm=plain,
                 coarse_lm=lm.models["coarse"], fine_lm=lm.models["fine"], sizes=st.TINY_BEAT,
                 semantic_rate=lm.semantic_rate, windows=lm.windows)


def test_guidance_can_sharpen_the_beat_too():
    inputs = SEM.build_inputs(mulan=np.ones((1, st.TINY.mulan_levels), np.int32),
                              tempo=st.tempo_of(120.0, 0.0, 25.0))
    kept, dropped = SEM.uncond_inputs(inputs), SEM.uncond_inputs(inputs, drop_tempo=True)
    assert (kept[:, -3:-1] == inputs[:, -3:-1]).all() and (dropped[:, -3:-1] == st.UNCOND).all()
    assert (SEM.aligned_ids(dropped, 8) == -1).all() and (SEM.aligned_ids(kept, 8)[:, -8:] >= 0).all()
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0, sizes=st.TINY_BEAT)
    table = lm.models["semantic"].aligned_embed
    table.set_value(jax.random.normal(jax.random.key(1), table[...].shape, table[...].dtype))
    args = (["drums at 120 bpm"], 0.2)
    plain = lm.generate_full(*args, guidance_scale=3.0, progress=False).tokens["semantic"]
    sharp = lm.generate_full(*args, guidance_scale=3.0, guide_tempo=True, progress=False).tokens["semantic"]
    assert (plain != sharp).any() and lm.sampling["guide_tempo"] is False
    model = lm.models["semantic"]
    a = jnp.asarray(SEM.aligned_ids(inputs, 4))
    with pytest.raises(ValueError, match="uncond_aligned= needs"):
        dec.sample(model, jnp.asarray(inputs), max_new_tokens=4, rng=jax.random.key(0), aligned=a, uncond_aligned=a)
    with pytest.raises(ValueError, match="uncond_aligned must have"):
        dec.sample(model, jnp.asarray(inputs), max_new_tokens=4, rng=jax.random.key(0), aligned=a,
                   uncond_prompts=jnp.asarray(dropped), guidance_scale=3.0, uncond_aligned=a[:, 1:])


def test_infer_reads_a_bpm_per_line_and_fails_it_on_a_model_without_tempo(tmp_path):
    import json

    from musiclm_jax.batch_decode import run_infer
    from musiclm_jax.pipeline import tiny_random

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "drums at 100 bpm", "id": "a"}\n{"prompt": "drums", "id": "b", "bpm": 140}\n')
    s = run_infer(tiny_random(seed=0, sizes=st.TINY_BEAT), str(prompts), str(tmp_path / "o"), duration_s=0.2,
                  batch_size=2, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert s["done"] == 2 and [r["bpm"] for r in rows] == [100.0, 140.0]
    s = run_infer(tiny_random(seed=0), str(prompts), str(tmp_path / "p"), duration_s=0.2, progress=False)
    assert (s["done"], s["failed"]) == (1, 1) and "no tempo conditioning" in s["failed_prompts"][0]["error"]


def test_chain_tempo_sources():
    from musiclm_jax.eval.chain import row_tempo
    from musiclm_jax.eval.data import Item
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0, sizes=st.TINY_BEAT)
    refs = [Item(prompt="x at 90 bpm", wave=np.zeros(8), sample_rate=8000, truth={"bpm": 120.0})]
    assert row_tempo(lm, "text", refs, "prompt") == {} and row_tempo(lm, "audio", refs, "prompt") == {}
    assert row_tempo(lm, "audio", refs, "reference") == {"bpm": [120.0]} == row_tempo(lm, "text", refs, "reference")
    assert row_tempo(lm, "text_guided", refs, "none") == {"bpm": None}
    assert row_tempo(tiny_random(seed=0), "audio", refs, "reference") == {}
    with pytest.raises(ValueError, match="unknown tempo source"):
        row_tempo(lm, "audio", refs, "oracle")


def test_beat_experiment_config_parses():
    import gin

    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config(["experiments/stage_semantic_quickstart_beat.gin"], ["MODEL_DIR = '/tmp/unused'"])
        family = gin.query_parameter("train.family").scoped_configurable_fn()
        assert family.aligned.has_beat and family.config.aligned_inputs and family.tempo_prob == 0.1
        assert family.tempo_ids == st.StageLayout("semantic", st.QUICKSTART_BEAT).tempo_ids()
        assert gin.query_parameter("stage_task_dataset.task") == "synthcaps_quickstart_beat_semantic"
        assert gin.query_parameter("stage_task_dataset.inputs_length") == st.QUICKSTART.mulan_levels + 3
    finally:
        gin.clear_config()
