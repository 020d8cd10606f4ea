"""KV-cache decoding: cache == full forward, greedy/top-k/top-p, logit mask, guidance, EOS, ragged prompts, mesh."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from musiclm_jax.lm import decoding as dec
from musiclm_jax.lm import transformer as tr
from musiclm_jax.train import partitioning

VOCAB = 64


@pytest.fixture(scope="module")
def model():
    return tr.Transformer(tr.preset("tiny", dtype="float32", num_heads=4), rngs=nnx.Rngs(0))


def _prompts(b, l, seed=1):
    return jax.random.randint(jax.random.key(seed), (b, l), 2, VOCAB, dtype=jnp.int32)


def test_cached_extend_matches_full_forward_with_padding_and_prefix(model):
    prompts = _prompts(2, 7)
    lengths = jnp.array([7, 4])
    prefix = jnp.array([3, 2])
    follow = _prompts(2, 5, seed=9)
    toks, pos = dec.left_align(prompts, lengths)
    cache = model.init_cache(2, 12)
    chunks = [model.extend(toks, cache, positions=pos, prefix_len=prefix)]
    cache = chunks[0][1]
    for t in range(follow.shape[1]):
        logits, cache = model.extend(follow[:, t:t + 1], cache, positions=lengths[:, None] + t, prefix_len=prefix)
        chunks.append((logits, cache))
    for row in range(2):
        n = int(lengths[row])
        full = model(jnp.concatenate([prompts[row:row + 1, :n], follow[row:row + 1]], 1), prefix_len=prefix[row:row + 1])
        np.testing.assert_allclose(chunks[0][0][row, 7 - n:], full[0, :n], atol=1e-5)  # prefill (left-aligned)
        steps = jnp.concatenate([c[0] for c in chunks[1:]], axis=1)
        np.testing.assert_allclose(steps[row], full[0, n:], atol=1e-5)


def test_greedy_equals_argmax_of_full_forward(model):
    prompts = _prompts(2, 5)
    out, lengths = dec.sample(model, prompts, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0)
    assert out.shape == (2, 8) and out.dtype == jnp.int32 and lengths.tolist() == [8, 8]
    full = model(jnp.concatenate([prompts, out], axis=1))
    np.testing.assert_array_equal(jnp.argmax(full[:, 4:-1], -1), out)
    uncached, _ = dec.sample(model, prompts, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0,
                             use_cache=False)
    np.testing.assert_array_equal(uncached, out)


def test_ragged_prompts_decode_as_if_alone(model):
    prompts = _prompts(3, 6)
    lengths = jnp.array([6, 2, 4])
    prefix = jnp.array([2, 1, 3])
    out, _ = dec.sample(model, prompts, prompt_lengths=lengths, prefix_len=prefix, max_new_tokens=6,
                        rng=jax.random.key(0), temperature=0.0)
    for row in range(3):  # greedy tokens = argmax of the row's own unpadded full forward
        n = int(lengths[row])
        full = model(jnp.concatenate([prompts[row:row + 1, :n], out[row:row + 1]], 1), prefix_len=prefix[row:row + 1])
        np.testing.assert_array_equal(jnp.argmax(full[0, n - 1:-1], -1), out[row])


def test_top_k_1_is_greedy_and_rng_reproducible(model):
    prompts = _prompts(2, 5)
    greedy, _ = dec.sample(model, prompts, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0)
    top1, _ = dec.sample(model, prompts, max_new_tokens=8, rng=jax.random.key(5), temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)

    kw = dict(max_new_tokens=12, temperature=1.5, num_samples=3)
    a, _ = dec.sample(model, prompts, rng=jax.random.key(1), **kw)
    b, _ = dec.sample(model, prompts, rng=jax.random.key(1), **kw)
    c, _ = dec.sample(model, prompts, rng=jax.random.key(2), **kw)
    assert a.shape == (6, 12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # samples of one prompt differ


def test_filter_logits_top_k_top_p():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda **kw: (dec.filter_logits(logits, **kw) > -1e29)[0].tolist()
    assert kept(top_k=2) == [False, True, False, True]
    assert kept(top_p=0.5) == [False, True, False, False]
    assert kept(top_p=0.7) == [False, True, False, True]
    assert kept(top_p=0.9) == [False, True, True, True]
    assert kept(top_k=3, top_p=0.9) == [False, True, True, True]


def codebook_mask(step, logits):
    """Step s may only emit tokens of codebook s % 3 (ids 16*(s%3)+16 .. +15)."""
    lo = 16 + 16 * (step % 3)
    ids = jnp.arange(logits.shape[-1])
    return jnp.where((ids >= lo) & (ids < lo + 16), logits, dec.NEG_INF)


def test_logit_mask_respected(model):
    out, _ = dec.sample(model, _prompts(4, 3), max_new_tokens=9, rng=jax.random.key(3), temperature=2.0,
                        logit_mask_fn=codebook_mask)
    lo = 16 + 16 * (np.arange(9) % 3)
    assert np.all((np.asarray(out) >= lo) & (np.asarray(out) < lo + 16))


def test_guidance(model):
    prompts, uncond = _prompts(2, 5), _prompts(2, 3, seed=4)
    kw = dict(max_new_tokens=8, rng=jax.random.key(7), temperature=1.0)
    plain, _ = dec.sample(model, prompts, **kw)
    scale1, _ = dec.sample(model, prompts, uncond_prompts=uncond, guidance_scale=1.0, **kw)
    np.testing.assert_array_equal(scale1, plain)

    guided, _ = dec.sample(model, prompts, uncond_prompts=uncond, guidance_scale=3.0, max_new_tokens=8,
                           rng=jax.random.key(0), temperature=0.0)  # same program: scale and temperature are traced
    cond_l, unc_l = model(prompts)[:, -1], model(uncond)[:, -1]
    np.testing.assert_array_equal(guided[:, 0], jnp.argmax(unc_l + 3.0 * (cond_l - unc_l), -1))
    with pytest.raises(ValueError, match="uncond_prompts"):
        dec.sample(model, prompts, guidance_scale=2.0, **kw)


EOS = 1


def eos_schedule(step, logits):
    """Row 0 must emit EOS at step 2, row 1 at step 4."""
    force = jnp.array([2, 4])[:, None] == step
    eos = jnp.where(jnp.arange(logits.shape[-1]) == EOS, 0.0, dec.NEG_INF)
    return jnp.where(force, eos, logits.at[:, EOS].set(dec.NEG_INF))


def test_eos_stops_and_pads(model):
    out, lengths, steps = dec.generate(model, _prompts(2, 4), max_new_tokens=10, rng=jax.random.key(0),
                                       temperature=1.0, eos_id=EOS, pad_id=0, logit_mask_fn=eos_schedule)
    assert lengths.tolist() == [3, 5]
    assert int(steps) == 5  # the loop stopped once both rows were done, not after 10 steps
    assert out[0, 2] == EOS and out[1, 4] == EOS
    assert np.all(np.asarray(out[0, 3:]) == 0) and np.all(np.asarray(out[1, 5:]) == 0)
    assert np.all(np.asarray(out[0, :2]) != 0)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="prompt_lengths"):
        dec.sample(model, _prompts(2, 4), prompt_lengths=jnp.array([0, 4]), max_new_tokens=2, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.sample(model, _prompts(2, 4), max_new_tokens=0, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="eos_id"):
        dec.sample(model, _prompts(2, 4), max_new_tokens=2, rng=jax.random.key(0), eos_id=VOCAB)


def test_scan_layers_matches_unrolled(model):
    cfg = dataclasses.replace(model.cfg, scan_layers=True)
    scanned = tr.Transformer(cfg, rngs=nnx.Rngs(1))
    nnx.update(scanned.layers, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(l, nnx.Param) for l in model.layers]))
    for name in ("embed", "logits_kernel"):
        getattr(scanned, name).set_value(getattr(model, name)[...])
    nnx.update(scanned.relpos, nnx.state(model.relpos))
    nnx.update(scanned.final_norm, nnx.state(model.final_norm))
    prompts = _prompts(2, 5)
    np.testing.assert_allclose(scanned(prompts, prefix_len=jnp.array([2, 0])),
                               model(prompts, prefix_len=jnp.array([2, 0])), atol=1e-5)
    a, _ = dec.sample(model, prompts, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0)
    b, _ = dec.sample(scanned, prompts, max_new_tokens=8, rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(a, b)
    assert scanned.init_cache(2, 4)["k"].shape == (cfg.num_layers, 2, 4, cfg.num_heads, cfg.head_dim)


def test_sharded_decoding_on_8_devices_matches_one_device(model):
    prompts, uncond = _prompts(2, 5), _prompts(2, 3, seed=4)
    kw = dict(max_new_tokens=8, rng=jax.random.key(0), temperature=0.0, uncond_prompts=uncond, guidance_scale=2.0)
    ref, _ = dec.sample(model, prompts, **kw)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    graphdef, state = nnx.split(model)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), tr.logical_param_specs(model, mesh))
    sharded = nnx.merge(graphdef, jax.device_put(state, shardings))
    with partitioning.axis_rules(mesh):
        out, _ = dec.sample(sharded, prompts, **kw)
    np.testing.assert_array_equal(out, ref)


def test_one_key_gives_the_tokens_it_gave_before_per_row_keys(model):
    # computed with the single-key sampler before per-row keys existed: one key must keep drawing exactly these
    prompts, uncond = _prompts(2, 5), _prompts(2, 3, seed=4)
    kw = dict(max_new_tokens=6, temperature=1.0)
    samples, _ = dec.sample(model, prompts, rng=jax.random.key(11), num_samples=2, **kw)
    assert samples.tolist() == [[52, 7, 22, 42, 36, 34], [56, 25, 13, 31, 54, 14], [25, 22, 3, 35, 50, 26],
                                [8, 60, 26, 17, 33, 55]]
    guided, _ = dec.sample(model, prompts, rng=jax.random.key(11), uncond_prompts=uncond, guidance_scale=3.0, **kw)
    assert guided.tolist() == [[53, 39, 43, 43, 36, 26], [48, 48, 48, 59, 44, 14]]
    raw, _ = dec.sample(model, prompts, rng=jax.random.PRNGKey(11), **kw)  # raw uint32 key data still works
    assert raw.tolist() == [[52, 7, 22, 42, 36, 34], [48, 48, 9, 2, 33, 51]]


@pytest.mark.parametrize("num_samples,guided", [(1, False), (2, False), (1, True)])
def test_per_row_keys_make_rows_independent_of_their_batch(model, num_samples, guided):
    prompts, lengths, uncond = _prompts(2, 5), jnp.array([5, 3]), _prompts(2, 3, seed=4)
    keys = jnp.stack([jax.random.key(21), jax.random.key(22)])

    def run(rows, rng):
        extra = dict(uncond_prompts=uncond[rows], guidance_scale=3.0) if guided else {}
        out, _ = dec.sample(model, prompts[rows], prompt_lengths=lengths[rows], rng=rng, max_new_tokens=6,
                            temperature=1.5, num_samples=num_samples, **extra)
        return np.asarray(out)
    both = run(slice(0, 2), keys)
    alone = np.concatenate([run(slice(r, r + 1), keys[r:r + 1]) for r in range(2)])
    np.testing.assert_array_equal(both, alone)
    swapped = run(slice(None, None, -1), keys[::-1])  # row order does not matter either
    np.testing.assert_array_equal(swapped.reshape(2, num_samples, 6)[::-1].reshape(-1, 6), both)
    if num_samples == 1:  # one prompt with keys [k] draws what it draws with the single key k
        np.testing.assert_array_equal(run(slice(1, 2), keys[1]), alone[1:])
    else:
        assert not np.array_equal(both[0], both[1])  # the samples of one prompt differ
    with pytest.raises(ValueError, match="one key per prompt"):
        run(slice(0, 2), keys[:1])
