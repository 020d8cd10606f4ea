"""Decoder-only Transformer: shapes, prefix/causal attention pattern, packing, logical names, sizes, loss."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from musiclm_jax.lm import transformer as tr
from musiclm_jax.train import partitioning

LOGICAL_NAMES = {"vocab", "embed", "mlp", "heads", "kv", "relpos_buckets", "layers"}


def _model(**overrides):
    cfg = tr.preset("tiny", dtype="float32", **overrides)
    return tr.Transformer(cfg, rngs=nnx.Rngs(0))


def _tokens(b, l, seed=1, vocab=64):
    return jax.random.randint(jax.random.key(seed), (b, l), 0, vocab, dtype=jnp.int32)


def test_forward_shapes_and_bf16_activations():
    model = tr.Transformer(tr.preset("tiny"), rngs=nnx.Rngs(0))  # default: bf16 activations, fp32 params
    logits = model(_tokens(2, 12))
    assert logits.shape == (2, 12, 64) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("shared_relpos", [True, False])
def test_prefix_and_causal_pattern(shared_relpos):
    model = _model(shared_relpos=shared_relpos)
    toks = _tokens(1, 10)
    prefix = jnp.array([4])
    base = model(toks, prefix_len=prefix)

    # A later (target) token never changes earlier logits.
    later = model(toks.at[0, 7].set((toks[0, 7] + 1) % 64), prefix_len=prefix)
    np.testing.assert_allclose(later[0, :7], base[0, :7], atol=1e-6)
    assert float(jnp.abs(later[0, 7:] - base[0, 7:]).max()) > 1e-4

    # A prefix token changes every prefix position, earlier ones included (bidirectional).
    changed = model(toks.at[0, 3].set((toks[0, 3] + 1) % 64), prefix_len=prefix)
    per_pos = jnp.abs(changed[0] - base[0]).max(-1)
    assert bool(jnp.all(per_pos > 1e-5)), per_pos

    # Without a prefix the same change leaves positions 0..2 alone (causal).
    causal = model(toks)
    causal_changed = model(toks.at[0, 3].set((toks[0, 3] + 1) % 64))
    np.testing.assert_allclose(causal_changed[0, :3], causal[0, :3], atol=1e-6)


def test_packing_equals_separate_rows():
    model = _model()
    a, b = _tokens(1, 5, seed=2), _tokens(1, 7, seed=3)
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.array([[1] * 5 + [2] * 7])
    out = model(packed, segment_ids=seg, prefix_len=jnp.array([2]))
    np.testing.assert_allclose(out[:, :5], model(a, prefix_len=jnp.array([2])), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], model(b, prefix_len=jnp.array([2])), atol=1e-5)


def test_left_padding_by_positions_matches_unpadded():
    model = _model()
    toks = _tokens(1, 6)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), toks], axis=1)
    positions = jnp.array([[-1, -1, -1, 0, 1, 2, 3, 4, 5]])
    out = model(padded, positions=positions, prefix_len=jnp.array([2]))
    np.testing.assert_allclose(out[:, 3:], model(toks, prefix_len=jnp.array([2])), atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(padded, positions=positions, segment_ids=jnp.ones_like(padded))


def test_segment_positions():
    seg = jnp.array([[1, 1, 2, 2, 2, 0, 0]])
    np.testing.assert_array_equal(tr.segment_positions(seg), [[0, 1, 0, 1, 2, 0, 1]])


def test_relative_position_buckets_t5_properties():
    rel = jnp.arange(-200, 201)
    b = tr.relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert int(b.min()) == 0 and int(b.max()) == 31
    # exact buckets near 0, monotone in |distance| on each side, saturating past max_distance
    assert len(set(np.asarray(b[200 - 7:200 + 1]).tolist())) == 8
    assert int(b[0]) == int(b[200 - 128]) and int(b[-1]) == int(b[200 + 128])
    one_sided = tr.relative_position_bucket(-jnp.arange(0, 300), bidirectional=False, num_buckets=32,
                                            max_distance=128)
    assert bool(jnp.all(jnp.diff(one_sided) >= 0)) and int(one_sided.max()) == 31


def test_cast_matmul_weights_keeps_bf16_outputs():
    model = tr.Transformer(tr.preset("tiny"), rngs=nnx.Rngs(0))
    toks = _tokens(2, 6)
    cast = tr.cast_matmul_weights(nnx.clone(model))
    np.testing.assert_array_equal(cast(toks), model(toks))
    assert cast.layers[0].mlp.wi[...].dtype == jnp.bfloat16 and cast.final_norm.scale[...].dtype == jnp.float32
    assert model.layers[0].mlp.wi[...].dtype == jnp.float32


def test_every_param_has_logical_names():
    for shared, tie, scan in ((True, False, False), (False, True, False), (False, False, True)):
        model = tr.Transformer(tr.preset("tiny", shared_relpos=shared, tie_embeddings=tie, gated_mlp=not tie,
                                         scan_layers=scan), rngs=nnx.Rngs(0))
        params = nnx.to_flat_state(nnx.state(model, nnx.Param))
        assert params
        for path, var in params:
            names = var.get_metadata().get("out_sharding")
            assert names is not None, f"{path} has no logical axis names"
            assert len(names) == var.ndim and set(names) <= LOGICAL_NAMES, (path, names)
            assert (names[0] == "layers") == (scan and path[0] == "layers"), (path, names)


def test_large_preset_size_without_allocation():
    cfg = tr.preset("large")
    n = tr.num_params(cfg)
    print(f"large stage LM: {n / 1e6:.1f}M parameters ({tr.num_params(cfg, embeddings=False) / 1e6:.1f}M "
          f"without embeddings), {tr.flops_per_token(cfg, 2048) / 1e9:.2f} GFLOP/token training at length 2048")
    assert 400e6 < n < 470e6
    assert (cfg.num_layers, cfg.num_heads, cfg.d_model, cfg.d_ff) == (24, 16, 1024, 4096)


def test_flops_per_token_formula():
    cfg = tr.preset("base")
    matmul_params = tr.num_params(cfg) - cfg.vocab_size * cfg.d_model  # embedding lookup is free
    norms_relpos = (2 * cfg.num_layers + 1) * cfg.d_model + cfg.relpos_num_buckets * cfg.num_heads
    assert tr.flops_per_token(cfg, 1, training=False) == pytest.approx(
        2 * (matmul_params - norms_relpos) + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim)
    assert tr.flops_per_token(cfg, 512) == 3 * tr.flops_per_token(cfg, 512, training=False)


def test_loss_and_metrics():
    logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]]))
    targets = jnp.array([[0, 1, 2]])
    weights = jnp.array([[1.0, 1.0, 0.0]])
    loss, m = tr.loss_and_metrics(logits, targets, weights)
    assert float(loss) == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2, rel=1e-5)
    assert float(m["accuracy"]) == pytest.approx(0.5) and float(m["num_tokens"]) == 2.0
    with pytest.raises(ValueError, match="disagree"):
        tr.loss_and_metrics(logits, targets[:, :2])


def test_dropout_uses_rngs_only_when_training():
    model = _model(dropout_rate=0.3)
    toks = _tokens(2, 8)
    np.testing.assert_array_equal(model(toks), model(toks))
    a = model(toks, deterministic=False)
    b = model(toks, deterministic=False)
    assert float(jnp.abs(a - b).max()) > 1e-4  # the stream advances between calls


def test_config_validation_and_gin():
    with pytest.raises(ValueError, match="activation"):
        tr.preset("tiny", activation="tanhh")
    with pytest.raises(ValueError, match="num_heads"):
        tr.preset("tiny", num_heads=0)
    with pytest.raises(ValueError, match="preset"):
        tr.preset("huge")
    try:
        gin.parse_config("TransformerConfig.num_layers = 3\nTransformerConfig.vocab_size = 99")
        cfg = tr.TransformerConfig()
        assert (cfg.num_layers, cfg.vocab_size, cfg.d_model) == (3, 99, 1024)
    finally:
        gin.clear_config()


def test_sharded_init_on_8_devices_matches_single_device():
    cfg = tr.preset("tiny", dtype="float32", num_heads=4)
    ref_model = tr.Transformer(cfg, rngs=nnx.Rngs(0))
    toks = _tokens(4, 8)
    ref = ref_model(toks, prefix_len=jnp.array([2, 0, 3, 1]))

    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    abstract = nnx.eval_shape(lambda: tr.Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), tr.logical_param_specs(abstract, mesh))
    state = jax.jit(lambda: nnx.state(tr.Transformer(cfg, rngs=nnx.Rngs(0))), out_shardings=shardings)()
    assert state["layers"][0]["mlp"]["wi"][...].sharding.spec == jax.P(None, "model")

    @jax.jit
    def forward(state, toks, prefix):
        with partitioning.axis_rules(mesh):
            return nnx.merge(graphdef, state)(toks, prefix_len=prefix)

    out = forward(state, toks, jnp.array([2, 0, 3, 1]))
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_changes_memory_not_the_gradients(remat):
    cfg = tr.preset("tiny", scan_layers=True, dtype="float32")
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 1, cfg.vocab_size)

    def grads(c):
        model = tr.Transformer(c, rngs=nnx.Rngs(0))

        def loss(m):
            return jnp.mean(m(tokens, prefix_len=jnp.array([3, 5])) ** 2)

        return jax.jit(nnx.grad(loss))(model)

    plain = jax.tree.leaves(nnx.state(grads(cfg)))
    rematted = jax.tree.leaves(nnx.state(grads(tr.preset("tiny", scan_layers=True, dtype="float32", remat=remat))))
    for a, b in zip(plain, rematted):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The rematerialised backward pass really recomputes: 'full' redoes the layer's matmuls (more dot_generals
    # in the gradient's program), 'dots' keeps them and redoes the elementwise work (more exp: softmax, gelu).
    def backward_ops(c):
        graphdef, params, rest = nnx.split(tr.Transformer(c, rngs=nnx.Rngs(0)), nnx.Param, ...)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(tokens) ** 2)  # noqa: E731
        text = str(jax.make_jaxpr(jax.grad(loss))(params))
        return text.count("dot_general"), text.count(" exp ")

    (dots_none, exp_none), (dots_remat, exp_remat) = (backward_ops(tr.preset("tiny", scan_layers=True)),
                                                      backward_ops(tr.preset("tiny", scan_layers=True, remat=remat)))
    assert dots_remat > dots_none if remat == "full" else exp_remat > exp_none
    with pytest.raises(ValueError, match="remat needs scan_layers=True"):
        tr.preset("tiny", remat="full")
    with pytest.raises(ValueError, match="remat='some'"):
        tr.preset("tiny", scan_layers=True, remat="some")
