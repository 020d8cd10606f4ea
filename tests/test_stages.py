import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.lm import stages
from musiclm_jax.lm.stages import PAPER, SEP, TINY, UNCOND, StageLayout, TokenSizes


def _tokens(sizes, b=2, ts=5, ta=6, seed=0):
    r = np.random.default_rng(seed)
    m = r.integers(0, sizes.mulan_codes, (b, sizes.mulan_levels))
    s = r.integers(0, sizes.semantic_codes, (b, ts))
    a = r.integers(0, sizes.codec_codes, (b, ta, sizes.codec_levels))
    return m, s, a


def test_paper_ranges_are_disjoint_and_cover_the_vocab():
    for name, lay in stages.layouts(PAPER).items():
        ranges = sorted(lay.streams.values())
        assert ranges[0][0] == stages.NUM_SPECIAL
        for (_, stop), (start, _) in zip(ranges, ranges[1:]):
            assert stop == start
        assert lay.vocab_size % 128 == 0 and lay.vocab_size >= lay.num_ids
    assert stages.layouts(PAPER)["coarse"].num_ids == 4 + 12 * 1024 + 1024 + 4 * 1024
    assert stages.layouts(PAPER)["fine"].num_ids == 4 + 12 * 1024
    # MuLan and semantic ids agree between the semantic and coarse stages
    sem, coarse = StageLayout("semantic", PAPER), StageLayout("coarse", PAPER)
    assert sem.streams["semantic"] == coarse.streams["semantic"] and sem.offset("mulan3") == coarse.offset("mulan3")


@pytest.mark.parametrize("stage", stages.STAGES)
def test_build_round_trip(stage):
    lay = StageLayout(stage, TINY)
    m, s, a = _tokens(TINY)
    inputs, targets = lay.build(mulan=m, semantic=s, acoustic=a)
    assert inputs[:, -1].tolist() == [SEP, SEP]
    assert targets.max() < lay.num_ids and targets.min() >= stages.NUM_SPECIAL
    codes = lay.targets_to_codes(targets)
    want = {"semantic": s, "coarse": a[..., :TINY.coarse_levels], "fine": a[..., TINY.coarse_levels:]}[stage]
    np.testing.assert_array_equal(codes, want)
    # jnp in -> jnp out, same values
    ji, jt = lay.build(mulan=jnp.asarray(m), semantic=jnp.asarray(s), acoustic=jnp.asarray(a))
    assert isinstance(jt, jax.Array)
    np.testing.assert_array_equal(np.asarray(ji), inputs)
    np.testing.assert_array_equal(np.asarray(jt), targets)


def test_frame_major_order_and_inputs():
    lay = StageLayout("coarse", TINY)
    m, s, a = _tokens(TINY, b=1, ts=2, ta=3)
    inputs, targets = lay.build(mulan=m, semantic=s, acoustic=a)
    o0, o1 = lay.offset("acoustic0"), lay.offset("acoustic1")
    assert targets[0].tolist() == [a[0, 0, 0] + o0, a[0, 0, 1] + o1, a[0, 1, 0] + o0, a[0, 1, 1] + o1,
                                   a[0, 2, 0] + o0, a[0, 2, 1] + o1]
    mulan_ids = [m[0, q] + lay.offset(f"mulan{q}") for q in range(TINY.mulan_levels)]
    assert inputs[0].tolist() == mulan_ids + (s[0] + lay.offset("semantic")).tolist() + [SEP]
    fine = StageLayout("fine", TINY)
    fi, ft = fine.build(acoustic=a)
    assert fi.shape == (1, 3 * TINY.coarse_levels + 1) and ft.shape == (1, 3 * TINY.fine_levels)
    assert ft[0, 0] == a[0, 0, 2] + fine.offset("acoustic2")


def test_uncond_inputs_replace_only_mulan():
    lay = StageLayout("coarse", TINY)
    m, s, a = _tokens(TINY)
    inputs, _ = lay.build(mulan=m, semantic=s, acoustic=a)
    u = lay.uncond_inputs(inputs)
    assert (u[:, :TINY.mulan_levels] == UNCOND).all()
    np.testing.assert_array_equal(u[:, TINY.mulan_levels:], inputs[:, TINY.mulan_levels:])
    with pytest.raises(ValueError, match="fine stage"):
        StageLayout("fine", TINY).uncond_inputs(inputs)


@pytest.mark.parametrize("stage", stages.STAGES)
def test_logit_mask_allows_only_the_position_codebook(stage):
    lay = StageLayout(stage, TINY)
    k = lay.tokens_per_frame
    logits = jnp.zeros((3, lay.vocab_size))
    for phase in range(k):
        mask = lay.logit_mask(phase)
        for step in range(2 * k):
            kept = np.flatnonzero(np.asarray(mask(jnp.int32(step), logits))[0] > -1e29)
            name = "semantic" if stage == "semantic" else f"acoustic{lay.target_levels[(step + phase) % k]}"
            start, stop = lay.streams[name]
            assert kept.tolist() == list(range(start, stop))
    assert lay.logit_mask(1) == lay.logit_mask(1) and hash(lay.logit_mask(1)) == hash(lay.logit_mask(1))


def test_bad_input_errors():
    lay = StageLayout("coarse", TINY)
    m, s, a = _tokens(TINY)
    with pytest.raises(ValueError, match="ids must be in"):
        lay.build(mulan=m + TINY.mulan_codes, semantic=s, acoustic=a)
    with pytest.raises(ValueError, match="levels"):
        lay.build(mulan=m[:, :1], semantic=s, acoustic=a)
    with pytest.raises(ValueError, match="outside their codebook"):
        lay.targets_to_codes(np.full((1, 4), lay.offset("acoustic1")))
    with pytest.raises(ValueError, match="unknown stage"):
        StageLayout("medium", TINY)
    with pytest.raises(ValueError, match="coarse_levels"):
        TokenSizes(codec_levels=4, coarse_levels=4)


def test_token_lm_conditioning_dropout():
    from musiclm_jax.lm import transformer as tr
    from musiclm_jax.lm.models import TokenLM

    lay = StageLayout("coarse", TINY)
    cfg = tr.preset("tiny", vocab_size=lay.vocab_size)
    fam = TokenLM(cfg, uncond_prob=0.5, uncond_span=lay.cond_span(), uncond_id=UNCOND)
    m, s, a = _tokens(TINY, b=64)
    inputs, targets = lay.build(mulan=m, semantic=s, acoustic=a)
    batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)}
    out = np.asarray(fam.drop_conditioning(batch, jax.random.key(0))["inputs"])
    np.testing.assert_array_equal(out, np.asarray(fam.drop_conditioning(batch, jax.random.key(0))["inputs"]))
    dropped = (out[:, :TINY.mulan_levels] == UNCOND).all(1)
    kept = (out[:, :TINY.mulan_levels] == inputs[:, :TINY.mulan_levels]).all(1)
    assert (dropped | kept).all() and 10 < dropped.sum() < 54
    np.testing.assert_array_equal(out[:, TINY.mulan_levels:], inputs[:, TINY.mulan_levels:])
    none = TokenLM(cfg).drop_conditioning(batch, jax.random.key(0))
    assert none is batch
    with pytest.raises(ValueError, match="uncond_span"):
        TokenLM(cfg, uncond_prob=0.1)
