"""Tempo conditioning of the coarse stage (TokenSizes.beat_stages): tempo tokens in its prefix, each acoustic frame's
beat phase as a second aligned channel, learning, the pipeline, export."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax.lm import decoding as dec
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr
from tiny_stage import heldout_accuracy, train_tiny_stage, trained_model

COARSE = st.StageLayout("coarse", st.TINY_COARSE_BEAT)
KEY_ONLY = st.StageLayout("coarse", st.TINY_KEY)
M = st.TINY.mulan_levels


def _raw(b, frames, rng):
    return (rng.integers(0, st.TINY.mulan_codes, (b, M)), rng.integers(0, st.TINY.semantic_codes, (b, frames // 2)),
            rng.integers(0, st.TINY.codec_codes, (b, frames, st.TINY.codec_levels)))


def test_coarse_tempo_tokens_and_beat_phases_match_the_semantic_stage():
    mulan, semantic, acoustic = _raw(2, 16, np.random.default_rng(0))
    tempo = st.tempo_of([120.0, np.nan], [0.25, 0.0], 25.0)   # 12.5 semantic frames a beat, half a beat in; unknown
    key = np.array([3, -1])
    inputs, targets = COARSE.build(mulan=mulan, semantic=semantic, acoustic=acoustic, key=key, tempo=tempo)
    plain_in, plain_tg = KEY_ONLY.build(mulan=mulan, semantic=semantic, acoustic=acoustic, key=key)
    # The prefix gains the two tempo tokens before SEP; the targets and every other id are the key layout's.
    assert inputs.shape[1] == plain_in.shape[1] + 2 and inputs[0, -1] == st.SEP
    np.testing.assert_array_equal(inputs[:, :-3], plain_in[:, :-1])
    np.testing.assert_array_equal(targets, plain_tg)
    lo, hi = COARSE.tempo_ids()
    assert lo <= inputs[0, -3] < inputs[0, -2] < hi and (inputs[1, -3:-1] == st.UNCOND).all()
    ids = COARSE.aligned_ids(inputs, targets.shape[1])
    p = inputs.shape[1]
    assert ids.shape == (2, p + targets.shape[1] - 1, 2)
    # Channel 0: each frame's semantic token, as without the tempo; channel 1: its beat phase, the semantic stage's
    # phase at the same time (acoustic frame f = semantic frame f / 2), -1 for the prefix and an unknown tempo.
    np.testing.assert_array_equal(ids[:, p - 1:, 0], KEY_ONLY.aligned_ids(plain_in, targets.shape[1])[:, p - 3:])
    sem = st.StageLayout("semantic", st.TINY_COARSE_BEAT)
    sem_in = sem.build_inputs(mulan=mulan, key=key, tempo=tempo)
    sem_phase = sem.aligned_ids(sem_in, 8)[0, sem_in.shape[1] - 1:]
    frame = np.arange(targets.shape[1]) // COARSE.tokens_per_frame
    np.testing.assert_array_equal(ids[0, p - 1:, 1][frame % 2 == 0], sem_phase[frame[frame % 2 == 0] // 2])
    assert (ids[:, :p - 1] == -1).all() and (ids[1, :, 1] == -1).all() and (ids[0, p - 1:, 1] >= 0).all()
    np.testing.assert_array_equal(np.asarray(COARSE.aligned_ids(jnp.asarray(inputs), targets.shape[1])), ids)
    # Guidance that sharpens the beat drops the tempo tokens, so the unconditional rows lose the beat phases only.
    dropped = COARSE.uncond_inputs(inputs, drop_tempo=True)
    assert (dropped[:, -3:-1] == st.UNCOND).all() and (dropped[:, M:-3] == inputs[:, M:-3]).all()
    un = COARSE.aligned_ids(dropped, targets.shape[1])
    assert (un[..., 1] == -1).all() and (un[..., 0] == ids[..., 0]).all()
    assert COARSE.needs_aligned and not KEY_ONLY.needs_aligned and st.stage_tempo_ids("coarse", st.TINY_KEY) == (0, 0)
    assert st.stage_tempo_ids("coarse", st.TINY_COARSE_BEAT) == (lo, hi)
    assert st.StageLayout("fine", st.TINY_COARSE_BEAT) == st.StageLayout("fine", st.TINY_COARSE_BEAT)
    with pytest.raises(ValueError, match="takes no tempo"):
        KEY_ONLY.build_inputs(mulan=mulan, semantic=semantic, tempo=tempo)
    with pytest.raises(ValueError, match="beat_stages must name"):
        st.TokenSizes(beat_phases=8, beat_stages=("fine",))
    with pytest.raises(ValueError, match="beat_phases .* must be <= the first semantic id"):
        big = st.StageLayout("coarse", dataclasses.replace(st.TINY_COARSE_BEAT, beat_phases=64))
        big.aligned_ids(big.build_inputs(mulan=mulan, semantic=semantic, tempo=tempo), 4)


def test_to_stage_gives_the_coarse_crop_its_tempo():
    import tensorflow as tf

    from musiclm_jax.tasks import preprocessors as pp

    ex = {"mulan_tokens": np.zeros((M,), np.int32), "semantic_tokens": np.arange(50) % 16,
          "acoustic_tokens": np.zeros((100, st.TINY.codec_levels), np.int32), "crop_start_seconds": np.float32(0.3),
          "bpm": np.float32(100.0)}
    ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in ex.items()})
    out = next(pp.to_stage(ds, stage="coarse", sizes=st.TINY_COARSE_BEAT, semantic_rate=25.0).as_numpy_iterator())
    np.testing.assert_array_equal(out["inputs"][-3:-1], COARSE.encode_tempo(st.tempo_of(100.0, 0.3, 25.0))[0])
    out = next(pp.to_stage(ds, stage="coarse", sizes=st.TINY_KEY, semantic_rate=25.0).as_numpy_iterator())
    assert out["inputs"].shape[0] == M + 50 + 2   # MuLan, semantic, key, SEP: no tempo tokens


ON, OFF = 1, 2   # planted level-0 codes: an onset on each beat, nothing between


def _beat_batch(b, frames, seed):
    """Coarse crops whose level-0 code is ON on the frames at beat phase 0 (each row its own tempo, 2-4 semantic
    frames a beat, and start phase) and OFF elsewhere; the semantic tokens and MuLan carry nothing about it."""
    rng = np.random.default_rng(seed)
    mulan, semantic, _ = _raw(b, frames, rng)
    tempo = np.stack([rng.uniform(2.0, 4.0, b), rng.uniform(0.0, 1.0, b)], 1).astype(np.float32)
    inputs = COARSE.build_inputs(mulan=mulan, semantic=semantic, tempo=tempo)
    k = COARSE.tokens_per_frame
    phase = COARSE.aligned_ids(inputs, frames * k)[:, inputs.shape[1] - 1::k, 1]   # each frame's beat phase
    level0 = np.where(phase == 0, ON, OFF)
    codes = np.stack([level0, np.full_like(level0, OFF)], -1)
    return inputs, COARSE.build_targets(acoustic=codes)


def test_the_coarse_stage_learns_where_the_beats_fall_and_decoding_follows_the_tempo():
    trainer, state = train_tiny_stage(COARSE, lambda i: _beat_batch(16, 16, seed=i), steps=80, lr=1e-2)
    accuracy = heldout_accuracy(trainer, state, *_beat_batch(32, 16, seed=10_000))
    print(f"\nheld-out accuracy of onset / no onset after 80 steps: {accuracy:.3f}")
    assert accuracy > 0.95
    model = trained_model(trainer, state)
    mulan, semantic, _ = _raw(1, 16, np.random.default_rng(1))
    for per_beat in (2.0, 3.0):   # semantic frames a beat: an onset every 4 / 6 acoustic frames
        prompt = COARSE.build_inputs(mulan=mulan, semantic=semantic,
                                     tempo=np.asarray([[per_beat, 0.0]], np.float32))
        new, _ = dec.sample(model, jnp.asarray(prompt), max_new_tokens=32, rng=jax.random.key(0), temperature=0.0,
                            aligned=jnp.asarray(COARSE.aligned_ids(prompt, 32)), logit_mask_fn=COARSE.logit_mask())
        onsets = np.flatnonzero(COARSE.targets_to_codes(np.asarray(new))[0, :, 0] == ON)
        assert len(onsets) >= 3 and np.allclose(np.diff(onsets), 2 * per_beat, atol=1), (per_beat, onsets)


def test_pipeline_tells_the_coarse_stage_the_tempo():
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0, sizes=st.TINY_COARSE_BEAT)
    table = lm.models["coarse"].aligned_embed
    table.set_value(jax.random.normal(jax.random.key(1), table[...].shape, table[...].dtype))  # as if trained
    assert lm.has_tempo and lm.models["coarse"].cfg.aligned_inputs
    semantic = np.random.default_rng(0).integers(0, st.TINY.semantic_codes, (1, 40))
    mulan = lm._text_tokens(["drums"])
    run = lambda bpm: lm.generate_from_tokens(mulan, 0.2, semantic=semantic, bpm=[bpm], progress=False,  # noqa
                                              seed=0).tokens["coarse"]
    np.testing.assert_array_equal(run(90), run(90))
    assert (run(90) != run(150)).any()   # the same semantic tokens, another beat grid
    guided = lm.generate_full(["drums at 120 bpm"], 0.2, guidance_scale=3.0, guide_tempo=True, progress=False)
    assert guided.bpm == [120.0] and guided.waves.shape[0] == 1
    # guide_tempo may name the stages whose unconditional branch loses the tempo, as guide_key does.
    semantic_only = lm.generate_full(["drums at 120 bpm"], 0.2, guidance_scale=3.0, guide_tempo=["semantic"],
                                     progress=False)
    np.testing.assert_array_equal(semantic_only.tokens["semantic"], guided.tokens["semantic"])
    assert (semantic_only.tokens["coarse"] != guided.tokens["coarse"]).any()
    with pytest.raises(ValueError, match="guide_tempo must be true, false or a list of 'semantic' / 'coarse'"):
        lm.generate_full(["drums"], 0.2, guidance_scale=3.0, guide_tempo=["fine"], progress=False)
    with pytest.raises(ValueError, match="beat_stages name the coarse stage"):
        plain = tr.Transformer(dataclasses.replace(lm.models["coarse"].cfg, aligned_inputs=False), rngs=nnx.Rngs(0))
        type(lm)(mulan=lm.mulan, codec=lm.codec, semantic_lm=lm.models["semantic"], coarse_lm=plain,
                 fine_lm=lm.models["fine"], sizes=st.TINY_COARSE_BEAT, semantic_rate=lm.semantic_rate,
                 windows=lm.windows)


def test_coarse_beat_experiment_configs_parse():
    import gin

    from musiclm_jax.train import gin_utils

    for name in ("stage_coarse_quickstart_key_beat", "stage_coarse_quickstart_key_beat_warm"):
        gin.clear_config()
        try:
            gin_utils.parse_config([f"experiments/{name}.gin"], ["MODEL_DIR = '/tmp/unused'"])
            family = gin.query_parameter("train.family").scoped_configurable_fn()
            layout = st.StageLayout("coarse", st.QUICKSTART_COARSE_BEAT)
            assert family.aligned == layout and family.config.aligned_inputs and family.tempo_prob == 0.1
            assert family.tempo_ids == layout.tempo_ids() and family.key_ids == layout.key_ids()
            assert family.config.vocab_size == layout.vocab_size
            assert gin.query_parameter("stage_task_dataset.task") == "synthcaps_quickstart_coarse_beat_coarse"
            # MuLan, 2 s of semantic tokens, key, 2 tempo tokens, SEP
            assert gin.query_parameter("stage_task_dataset.inputs_length") == st.QUICKSTART.mulan_levels + 50 + 4
        finally:
            gin.clear_config()
