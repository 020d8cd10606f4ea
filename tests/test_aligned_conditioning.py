"""Time-aligned conditioning of the coarse stage: the ids, the model, cached decoding, learning, the pipeline."""
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
from musiclm_jax.train import partitioning
from musiclm_jax.train.data import ResumableBatches
from musiclm_jax.train.optimizers import make_optimizer, make_schedule
from musiclm_jax.train.trainer import Trainer

COARSE = st.StageLayout("coarse", st.TINY)


def _raw(b, ts, seed=0):
    rng = np.random.default_rng(seed)
    s = st.TINY
    mulan = rng.integers(0, s.mulan_codes, (b, s.mulan_levels))
    semantic = rng.integers(0, s.semantic_codes, (b, ts))
    # Each frame's codes are a function of the semantic token of its time (2 acoustic frames per semantic token).
    frame_sem = np.repeat(semantic, 2, axis=1)
    acoustic = np.stack([(frame_sem * 3 + q) % s.codec_codes for q in range(s.codec_levels)], -1)
    return mulan, semantic, acoustic


def test_aligned_ids_point_each_target_at_the_semantic_token_of_its_time():
    mulan, semantic, acoustic = _raw(2, 5)
    inputs, targets = COARSE.build(mulan=mulan, semantic=semantic, acoustic=acoustic)
    p, t = inputs.shape[1], targets.shape[1]
    ids = COARSE.aligned_ids(inputs, t)
    assert ids.shape == (2, p + t - 1) and ids.dtype == np.int32
    assert (ids[:, :p - 1] == -1).all()
    k = COARSE.tokens_per_frame
    for j in range(t):  # position p - 1 + j predicts target j of frame j // k, which sounds with semantic[j // k // 2]
        np.testing.assert_array_equal(ids[:, p - 1 + j], semantic[:, j // k // 2] + COARSE.offset("semantic"))
    # jnp in, jnp out; the same values
    np.testing.assert_array_equal(np.asarray(COARSE.aligned_ids(jnp.asarray(inputs), t)), ids)
    with pytest.raises(ValueError, match="coarse stage"):
        st.StageLayout("fine", st.TINY).aligned_ids(inputs, t)
    assert st.stage_aligned("coarse", st.TINY, enabled=False) is None
    assert st.stage_aligned("coarse", st.TINY, enabled=True) == COARSE
    with pytest.raises(ValueError, match="coarse stage"):
        st.stage_aligned("semantic", st.TINY, enabled=True)


def _cfg(aligned):
    return tr.preset("tiny", vocab_size=COARSE.vocab_size, dtype="float32", max_len=128, aligned_inputs=aligned)


def _trained_looking(model, seed=3):
    """The aligned table starts at zero (the model is then its plain twin): give it values, as training would."""
    table = model.aligned_embed[...]
    model.aligned_embed.set_value(jax.random.normal(jax.random.key(seed), table.shape, table.dtype))
    return model


def test_aligned_model_decodes_with_the_cache_as_the_full_forward_reads():
    model = tr.Transformer(_cfg(True), rngs=nnx.Rngs(0))
    mulan, semantic, acoustic = _raw(3, 4, seed=1)
    inputs, targets = COARSE.build(mulan=mulan, semantic=semantic, acoustic=acoustic)
    n = targets.shape[1]
    aligned = COARSE.aligned_ids(inputs, n)
    # At init the aligned table is zero and every other parameter is the plain model's of the same seed.
    seq0 = jnp.concatenate([jnp.asarray(inputs), jnp.asarray(targets[:, :-1])], axis=1)
    plain = tr.Transformer(_cfg(False), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(model(seq0, aligned=jnp.asarray(aligned))), np.asarray(plain(seq0)))
    _trained_looking(model)
    with pytest.raises(ValueError, match="aligned"):
        model(jnp.asarray(inputs))
    with pytest.raises(ValueError, match="aligned"):
        dec.sample(model, jnp.asarray(inputs), max_new_tokens=n, rng=jax.random.key(0))
    with pytest.raises(ValueError, match=r"aligned must be \[3, "):
        dec.sample(model, jnp.asarray(inputs), max_new_tokens=n, rng=jax.random.key(0), aligned=aligned[:, :-1])
    kw = dict(max_new_tokens=n, rng=jax.random.key(0), temperature=0.0, prefix_len=inputs.shape[1],
              aligned=jnp.asarray(aligned), logit_mask_fn=COARSE.logit_mask())
    cached, _ = dec.sample(model, jnp.asarray(inputs), **kw)
    uncached, _ = dec.sample(model, jnp.asarray(inputs), use_cache=False, **kw)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
    # Greedy decoding is the argmax of the full forward over its own output.
    seq = jnp.concatenate([jnp.asarray(inputs), cached[:, :-1]], axis=1)
    full = model(seq, prefix_len=jnp.full((3,), inputs.shape[1]), aligned=jnp.asarray(aligned))
    masked = jax.vmap(COARSE.logit_mask(), in_axes=(0, 1), out_axes=1)(jnp.arange(n), full[:, inputs.shape[1] - 1:])
    np.testing.assert_array_equal(np.asarray(jnp.argmax(masked, -1)), np.asarray(cached))
    # The aligned ids change what it predicts (they are read), and a plain model refuses them.
    other = jnp.asarray(np.where(aligned >= 0, (aligned - COARSE.offset("semantic") + 5) % 16 + COARSE.offset("semantic"),
                                 -1))
    changed, _ = dec.sample(model, jnp.asarray(inputs), **{**kw, "aligned": other})
    assert (np.asarray(changed) != np.asarray(cached)).any()
    with pytest.raises(ValueError, match="without"):
        tr.Transformer(_cfg(False), rngs=nnx.Rngs(0))(seq, aligned=jnp.asarray(aligned))
    with pytest.raises(ValueError, match="set together"):
        TokenLM(_cfg(True))


def _train_accuracy(aligned: bool, steps: int = 80) -> float:
    family = TokenLM(_cfg(aligned), aligned=COARSE if aligned else None)
    trainer = Trainer(family, partitioning.make_mesh(devices=jax.devices()[:1]), rng_impl="rbg",
                      optimizer=lambda: make_optimizer("adamw", schedule=make_schedule(1e-2, "constant", 0)))
    state = trainer.init_state()
    for i in range(steps):
        inputs, targets = COARSE.build(**dict(zip(("mulan", "semantic", "acoustic"), _raw(16, 8, seed=i))))
        state, _ = trainer.train_step(state, trainer.device_batch({"inputs": inputs, "targets": targets}))
    inputs, targets = COARSE.build(**dict(zip(("mulan", "semantic", "acoustic"), _raw(32, 8, seed=10_000))))
    # Scored where the previous codes do not give the answer: level 0 of the first frame of each semantic token
    # (its second frame repeats the first, and level 1 is level 0 + 1).
    j = np.arange(targets.shape[1])
    weights = np.broadcast_to(((j % 2 == 0) & (j // 2 % 2 == 0)).astype(np.float32), targets.shape)
    batch = trainer.device_batch({"inputs": inputs, "targets": targets, "weights": weights})
    weight, metrics = jax.device_get(trainer.eval_step(state, batch))
    return float(metrics["accuracy"] / weight)


def test_aligned_conditioning_learns_what_each_frame_sounds_with():
    """Codes that depend on the semantic token of their own time: with the aligned ids the model learns them in a
    few steps on unseen sequences; finding the same token by attention over the prefix is much slower."""
    aligned, plain = _train_accuracy(True), _train_accuracy(False)
    print(f"\nheld-out accuracy after 80 steps where the codes change: aligned {aligned:.3f}, plain {plain:.3f}")
    assert aligned > 0.9 and plain < 0.5


def test_pipeline_generates_with_an_aligned_coarse_lm():
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0)
    cfg = dataclasses.replace(lm.models["coarse"].cfg, aligned_inputs=True)
    lm.models["coarse"] = _trained_looking(tr.Transformer(cfg, rngs=nnx.Rngs(7)))
    gen = lm.generate_full(["a calm piano waltz"], duration_s=0.25, seed=0, progress=False)
    again = lm.generate_full(["a calm piano waltz"], duration_s=0.25, seed=0, progress=False)
    np.testing.assert_array_equal(gen.tokens["coarse"], again.tokens["coarse"])
    assert np.isfinite(gen.waves).all() and gen.waves.shape == (1, round(0.25 * lm.sample_rate))
    # The coarse stage reads the semantic tokens at their times: other semantic tokens, other coarse codes.
    sem = gen.tokens["semantic"][:, 0]
    mulan = lm._text_tokens(["a calm piano waltz"])
    alt = lm.generate_from_tokens(mulan, 0.25, semantic=(sem + 1) % st.TINY.semantic_codes, seed=0, progress=False)
    assert (alt.tokens["coarse"][:, 0] != gen.tokens["coarse"][:, 0]).any()
    # The conditioning diagnosis (eval chain --conditioning) scores an aligned coarse LM through the training
    # family's own eval: the aligned ids are read there too.
    from musiclm_jax.eval import chain as chain_lib

    codes = gen.tokens["coarse"][:, 0]
    own = chain_lib.coarse_nll(lm, mulan, sem, codes)
    other = chain_lib.coarse_nll(lm, mulan, (sem + 1) % st.TINY.semantic_codes, codes)
    assert np.isfinite(own) and own != other


class _CoarseData(ResumableBatches):
    """Coarse-stage batches of the planted task above."""

    def __init__(self, batch_size, seed=0, **_):
        self.batch_size, self.seed = batch_size, seed

    def make_batch(self, position):
        inputs, targets = COARSE.build(**dict(zip(("mulan", "semantic", "acoustic"),
                                                  _raw(self.batch_size, 8, seed=(self.seed, position)))))
        return {"inputs": inputs, "targets": targets}


def test_aligned_stage_experiment_trains_loads_back_and_warm_starts(tmp_path):
    import gin

    from musiclm_jax import pipeline
    from musiclm_jax.train import gin_utils
    from musiclm_jax.train.checkpoints import export_inference
    from musiclm_jax.train.trainer import train

    data = lambda split, **kw: _CoarseData(**kw)
    opts = dict(dataset=data, eval_dataset=None, batch_size=8, log_period=5, async_checkpoints=False,
                progress=False, tensorboard=False)
    gin.clear_config()
    try:
        gin_utils.parse_config(["experiments/stage_coarse_tiny.gin"], [f"MODEL_DIR = '{tmp_path / 'a'}'",
                                                                       "ALIGNED = True"])
        family = gin.query_parameter("train.family").scoped_configurable_fn()
        assert family.aligned == COARSE and family.config.aligned_inputs
        first = train(num_steps=10, checkpoint_period=10, **opts)
    finally:
        gin.clear_config()
    model = pipeline.load_stage_lm(str(tmp_path / "a"))
    assert model.cfg.aligned_inputs
    export_inference(str(tmp_path / "a"), str(tmp_path / "exported"))

    # A second run warm-starts from the export: step 0 holds the first run's params, the optimizer starts fresh.
    gin.clear_config()
    try:
        gin_utils.parse_config(["experiments/stage_coarse_tiny.gin"], [f"MODEL_DIR = '{tmp_path / 'b'}'",
                                                                       "ALIGNED = True"])
        warm = train(num_steps=10, max_steps_this_run=0, init_from=str(tmp_path / "exported"), **opts)
        with pytest.raises(ValueError, match="cannot warm-start"):
            train(num_steps=10, max_steps_this_run=0, init_from=str(tmp_path / "nope"),
                  **{**opts, "dataset": data})
    finally:
        gin.clear_config()
    assert warm["start_step"] == 0 == int(warm["state"]["step"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(warm["state"]["params"]),
                 jax.device_get(first["state"]["params"]))
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(warm["state"]["opt"])
               if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
