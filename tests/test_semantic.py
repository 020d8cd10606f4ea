"""w2v-BERT: shapes, 25 Hz frame rate, span masking, the paper size, and a short training run with the trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax.codec.data import synthetic_tones
from musiclm_jax.semantic import w2v_bert as wb
from musiclm_jax.semantic.family import W2vBertFamily
from musiclm_jax.train.trainer import Trainer

TINY = wb.preset("tiny")


@pytest.fixture(scope="module")
def model():
    return wb.new_model(TINY, nnx.Rngs(jax.random.key(0, impl="rbg")))  # rbg: much faster than threefry on CPU


@nnx.jit(static_argnums=(2,))
def features(model, wave, layer=None):
    return model.features(wave, layer)


def test_shapes_and_frame_rate(model):
    assert TINY.frame_rate == 25.0 and TINY.samples_per_frame == 640
    n = int(2.3 * 16000)
    feats = features(model, jnp.zeros((2, n)))
    assert feats.shape == (2, n // 640, TINY.embed_dim) == (2, 57, 32)
    assert bool(jnp.all(jnp.isfinite(feats)))  # silence gives finite features
    assert features(model, jnp.zeros((1, 16000)), 0).shape == (1, 25, 32)
    with pytest.raises(ValueError, match="feature layer"):
        model.features(jnp.zeros((1, 16000)), layer=3)
    with pytest.raises(ValueError, match="shorter than one w2v-BERT frame"):
        model.features(jnp.zeros((1, 100)))


def test_span_mask_logic():
    m = np.asarray(wb.span_mask(jax.random.key(0), 64, 200, 0.05, 6))
    assert m.shape == (64, 200) and m.any(1).all()
    # Every masked run is at least one span long (spans may merge, and one cut at the end is shorter).
    for row in m:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            assert stop - start >= 6 or stop == 200
    # The expected masked fraction is 1 - (1 - p)^span.
    assert abs(m.mean() - (1 - 0.95 ** 6)) < 0.05
    # Rows with no sampled start still get one span.
    forced = np.asarray(wb.span_mask(jax.random.key(1), 16, 30, 1e-6, 4))
    assert (forced.sum(1) == 4).all()


def test_local_attention_bounds_receptive_field(model):
    """Changing audio far away from a frame leaves that frame's features unchanged (finite receptive field)."""
    rf = TINY.receptive_field_frames()
    n_frames = 2 * rf + 20
    wave = np.random.default_rng(0).normal(size=(1, n_frames * 640)).astype(np.float32) * 0.1
    other = wave.copy()
    other[:, -(10 * 640):] = 0.3  # change only the last 10 frames
    a, b = features(model, jnp.asarray(wave)), features(model, jnp.asarray(other))
    cut = n_frames - 10 - rf
    np.testing.assert_allclose(a[:, :cut], b[:, :cut], atol=1e-5)
    assert not np.allclose(a[:, -5:], b[:, -5:])


def test_losses_and_diversity():
    probs = jax.nn.one_hot(jnp.zeros((2, 5, 1), jnp.int32), 4)
    assert float(wb.diversity_loss(probs, jnp.ones((2, 5)))) == pytest.approx(0.75)  # one code of 4 in use
    uniform = jnp.full((2, 5, 1, 4), 0.25)
    assert float(wb.diversity_loss(uniform, jnp.ones((2, 5)))) == pytest.approx(0.0, abs=1e-5)
    # Contrastive: context equal to its own target and orthogonal to the others is classified correctly.
    t = jnp.eye(4)[None]
    ids = jnp.arange(4)[None, :, None]
    mask = jnp.ones((1, 4), bool)
    loss, acc = wb.contrastive_loss(t, t, ids, mask, 0.1)
    assert float(acc) == 4 and float(loss) < 4 * 1e-3
    loss_bad, acc_bad = wb.contrastive_loss(jnp.roll(t, 1, 1), t, ids, mask, 0.1)
    assert float(acc_bad) == 0 and float(loss_bad) > 10


def test_paper_size_builds_abstractly():
    cfg = wb.preset("paper")
    abstract = wb.abstract_model(cfg)
    n = wb.num_params(abstract)
    print(f"w2v-BERT paper: {n / 1e6:.1f}M parameters, "
          f"{cfg.num_contrastive_layers}+{cfg.num_mlm_layers} conformer layers")
    assert 550e6 < n < 650e6
    assert cfg.num_contrastive_layers + cfg.num_mlm_layers == 24 and cfg.feature_layer == 7
    specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
    axes = {name for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
            for name in spec if name}
    assert {"embed", "mlp", "heads", "kv", "conv", "codebook"} <= axes


def test_bad_config():
    with pytest.raises(ValueError, match="feature_layer"):
        wb.preset("tiny", feature_layer=5)
    with pytest.raises(ValueError, match="unknown w2v-BERT preset"):
        wb.preset("huge")


def test_short_training_run_decreases_losses():
    """30 steps on one fixed batch; the eval objective (fixed masks, no Gumbel noise) must drop."""
    # One conformer layer per module keeps the compile short; sharded over the 8 fake devices.
    family = W2vBertFamily(config=wb.preset("tiny", num_contrastive_layers=1, num_mlm_layers=1),
                           learning_rate=1e-3, warmup_steps=5)
    trainer = Trainer(family, rng_impl="rbg")
    state = trainer.init_state()
    batch = trainer.device_batch(next(synthetic_tones(batch_size=8, num_samples=32000, seed=0)))

    def evaluate(state):
        weight, sums = jax.device_get(trainer.eval_step(state, batch))
        return {k: float(v) / float(weight) for k, v in sums.items()}

    before = evaluate(state)
    history = []
    for _ in range(30):
        state, metrics = trainer.train_step(state, batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    after = evaluate(state)
    for key in ("loss", "contrastive_loss", "mlm_loss", "diversity_loss"):
        assert all(np.isfinite(h[key]) for h in history), key
    assert history[-1]["skipped_steps"] == 0
    print("eval before", before, "after", after)
    assert after["loss"] < 0.8 * before["loss"]
    assert after["contrastive_loss"] < before["contrastive_loss"]
    assert after["mlm_loss"] < before["mlm_loss"]


@pytest.mark.parametrize("name,preset_name", [("w2v_bert_tiny_synthetic", "tiny"), ("w2v_bert_tiny_synthcaps", "tiny"),
                                              ("w2v_bert_small_synthcaps", "small"),
                                              ("w2v_bert_paper", "paper")])
def test_gin_experiments_match_presets(name, preset_name):
    import gin

    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config([f"experiments/{name}.gin"], ["MODEL_DIR = '/tmp/unused'"])
        family = W2vBertFamily()
        cfg = family.config
        expected = wb.preset(preset_name, dtype=cfg.dtype)
        assert cfg == expected
        assert gin.query_parameter("train.dataset") is not None
    finally:
        gin.clear_config()
