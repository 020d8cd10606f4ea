"""TokenLM on seqio's packed prefix-LM features: each segment computes exactly what its unpacked example computes,
segments do not see each other, and classifier-free-guidance dropout acts per segment."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from musiclm_jax.lm import transformer as tr  # noqa: E402
from musiclm_jax.lm.models import TokenLM  # noqa: E402

UNCOND = 3


def _examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    # ids >= 4: seqio treats 0 as padding, and UNCOND must stand out
    return [{"inputs": rng.integers(4, 64, n_in).astype(np.int32), "targets": rng.integers(4, 64, n_t).astype(np.int32)}
            for n_in, n_t in lengths]


def _pack(examples, inputs_length, targets_length):
    """The examples as seqio's PrefixLMFeatureConverter(pack=True) batches them: [rows, inputs + targets length]."""
    spec = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={"inputs": spec, "targets": spec})
    ds = seqio.PrefixLMFeatureConverter(pack=True)(ds, {"inputs": inputs_length, "targets": targets_length})
    rows = list(ds.as_numpy_iterator())
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


@pytest.fixture(scope="module")
def lm():
    """(family, models, run): jitted run(batch) = (loss, eval, logits); one compile per shape beats eager ops."""
    family = TokenLM(tr.preset("tiny", dtype="float32"))
    models = family.init(nnx.Rngs(0))
    run = nnx.jit(lambda m, b: (family.loss(m, b, None), family.eval(m, b),
                                family._forward(m["model"], b, deterministic=True)[0]))
    return family, models, lambda batch: run(models, batch)


def test_packed_loss_and_logits_equal_the_unpacked_examples(lm):
    family, _, run = lm
    examples = _examples([(3, 4), (2, 5), (4, 3)])
    packed = _pack(examples, 6, 10)
    assert packed["decoder_target_tokens"].shape == (2, 16) and int(packed["decoder_segment_ids"].max()) == 2
    (packed_loss, packed_weight, _), (eval_weight, metrics), logits = run(packed)
    loss_sum, weight, count = 0.0, 0.0, 0
    row, start = 0, 0
    for ex in examples:
        n_in, n_t = len(ex["inputs"]), len(ex["targets"])
        pad = 6 - n_t  # right-padded targets with zero weights, as StageLMFeatureConverter gives them
        batch = {"inputs": jnp.asarray(ex["inputs"])[None],
                 "targets": jnp.asarray(np.pad(ex["targets"], (0, pad)))[None],
                 "weights": jnp.asarray([[1.0] * n_t + [0.0] * pad])}
        (loss, w, _), _, unpacked = run(batch)
        loss_sum, weight = loss_sum + float(loss), weight + float(w)
        count += n_t
        # a segment's logits from its last input on are the unpacked example's logits over its targets
        if start + n_in + n_t > 16:
            row, start = row + 1, 0
        np.testing.assert_allclose(logits[row, start + n_in - 1:start + n_in + n_t - 1], unpacked[0, :n_t],
                                   atol=1e-5)
        start += n_in + n_t
    np.testing.assert_allclose(float(packed_loss), loss_sum, rtol=1e-5)
    assert float(packed_weight) == weight == count == family.tokens(packed)
    assert float(eval_weight) == weight and np.isclose(float(metrics["loss"]), loss_sum, rtol=1e-5)
    assert family.flops(packed) == tr.flops_per_token(family.config, 16) * 2 * 16


def test_segments_do_not_see_each_other(lm):
    _, _, run = lm
    forward = lambda batch: run(batch)[2]  # noqa: E731
    packed = _pack(_examples([(3, 4), (2, 5), (4, 3)]), 6, 10)  # the shapes of the test above: no compile
    seg = packed["decoder_segment_ids"]
    tokens = packed["decoder_target_tokens"]
    changed = {**packed, "decoder_target_tokens": jnp.where(seg == 2, (tokens + 1) % 60 + 4, tokens)}
    before, after = forward(packed), forward(changed)
    first, second = np.asarray(seg[0] == 1), np.asarray(seg[0] == 2)
    np.testing.assert_array_equal(after[0, first], before[0, first])
    assert float(jnp.abs(after[0, second] - before[0, second]).min()) > 1e-5  # every changed position moves
    # A segment's inputs are bidirectional: its last input changes its first input's logits; a target does not.
    last_input = {**packed, "decoder_target_tokens": tokens.at[0, 2].set(5 if tokens[0, 2] != 5 else 6)}
    first_target = {**packed, "decoder_target_tokens": tokens.at[0, 3].set(5 if tokens[0, 3] != 5 else 6)}
    assert float(jnp.abs(forward(last_input)[0, 0] - before[0, 0]).max()) > 1e-5
    np.testing.assert_array_equal(forward(first_target)[0, :3], before[0, :3])


@pytest.mark.parametrize("prob", [0.1, 0.9])
def test_conditioning_dropout_is_per_segment_and_only_on_the_inputs_span(prob):
    family = TokenLM(tr.preset("tiny", dtype="float32"), uncond_prob=prob, uncond_span=(1, 3), uncond_id=UNCOND)
    rng = np.random.default_rng(1)
    lengths = [(int(rng.integers(2, 6)), int(rng.integers(2, 4))) for _ in range(300)]  # some inputs end before 3
    packed = _pack(_examples(lengths, seed=2), 8, 16)
    out = np.asarray(family.drop_conditioning(packed, jax.random.key(0))["decoder_target_tokens"])
    tokens, seg = np.asarray(packed["decoder_target_tokens"]), np.asarray(packed["decoder_segment_ids"])
    weights, pos = np.asarray(packed["decoder_loss_weights"]), np.asarray(packed["decoder_positions"])
    span = (seg > 0) & (weights == 0) & (pos >= 1) & (pos < 3)  # inputs positions in [1, 3) of their segment
    changed = out != tokens
    assert (span >= changed).all() and (out[changed] == UNCOND).all()
    rows = []  # per row: whether each segment dropped its span
    for r in range(seg.shape[0]):
        row = [set(changed[r][span[r] & (seg[r] == s)].tolist()) for s in range(1, seg[r].max() + 1)]
        assert all(len(d) == 1 for d in row)  # a segment's span is dropped whole or not at all
        rows.append([d == {True} for d in row])
    flat = [d for row in rows for d in row]
    assert len(flat) == 300 and abs(np.mean(flat) - prob) < 0.06
    assert any(len(set(row)) == 2 for row in rows)  # segments of one row decide independently
    assert TokenLM(tr.preset("tiny")).drop_conditioning(packed, jax.random.key(0)) is packed


def test_segments_without_inputs_predict_their_targets_after_the_first(lm):
    family, _, run = lm
    packed = _pack(_examples([(0, 9), (0, 7), (0, 8)]), 6, 10)  # rows of 16 tokens, as above: no compile
    layout = family._packed(packed)
    assert not layout["bidirectional"].any()  # no inputs, no bidirectional prefix
    (loss, weight, _), _, _ = run(packed)
    assert np.isfinite(float(loss)) and float(weight) == 8 + 6 + 7  # no BOS: a segment's first target is context


def test_a_batch_without_targets_fails_in_one_line(lm):
    family, models, _ = lm
    with pytest.raises(ValueError, match="needs 'targets'.*or seqio's packed 'decoder_\\*' features"):
        family.loss(models, {"tokens": jnp.ones((1, 4), jnp.int32)}, None)
