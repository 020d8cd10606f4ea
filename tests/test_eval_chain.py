"""The stage-by-stage diagnosis (`eval chain`) on tiny random parts, generation from given tokens, and the
music-ness metrics (tonal / pulse clarity) and bootstrap intervals it reports."""
import json
import os

import numpy as np
import pytest

from musiclm_jax import pipeline
from musiclm_jax.eval import chain as chain_lib
from musiclm_jax.eval import metrics as M
from musiclm_jax.eval.backends import get_backend
from musiclm_jax.eval.data import Item, Skipped


class _EnergyTokens:
    """A semantic tokenizer stand-in at the tiny model's semantic rate: frame loudness in 16 bins."""

    def __init__(self, rate: float):
        self.rate = rate

    def tokens(self, waves, sample_rate):
        waves = np.atleast_2d(np.asarray(waves, np.float32))
        hop = int(round(sample_rate / self.rate))
        frames = -(-waves.shape[1] // hop)
        pad = np.pad(waves, ((0, 0), (0, frames * hop - waves.shape[1])))
        rms = np.sqrt(np.mean(pad.reshape(len(waves), frames, hop) ** 2, -1))
        return np.clip((rms * 64).astype(np.int32), 0, 15)


@pytest.fixture(scope="module")
def lm():
    m = pipeline.tiny_random(0)
    m.semantic_tokenizer = _EnergyTokens(m.semantic_rate)
    return m


def _tone(freqs, seconds, sr=8000, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    w = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    return (0.3 * w + 0.01 * np.random.default_rng(seed).normal(size=t.size)).astype(np.float32)


def _refs():
    truth = [dict(bpm=120.0, key="C", mode="major", instrument="piano"),
             dict(bpm=90.0, key="A", mode="minor", instrument="violin"),
             dict(bpm=100.0, key="G", mode="major", instrument="piano")]
    chords = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (196.0, 246.9, 293.7)]
    refs = [Item(prompt=f"a {t['instrument']} tune in {t['key']} {t['mode']}", wave=_tone(c, 0.35, seed=i),
                 sample_rate=8000, id=f"clip{i}", truth=t) for i, (t, c) in enumerate(zip(truth, chords))]
    short = Item(prompt="too short", wave=_tone((440.0,), 0.1), sample_rate=8000, id="short", truth={})
    return refs + [short]


def test_generate_from_tokens_keeps_the_given_stages(lm):
    refs = _refs()[:2]
    waves = np.stack([r.wave[:2400] for r in refs])
    toks = chain_lib.clip_tokens(lm, waves, 8000, 0.3)
    assert toks["mulan"].shape == (2, lm.sizes.mulan_levels) and toks["semantic"].shape == (2, 30)
    assert toks["codes"].shape == (2, 60, lm.sizes.codec_levels)
    cq = lm.sizes.coarse_levels
    g = lm.generate_from_tokens(toks["mulan"], 0.3, semantic=toks["semantic"], coarse=toks["codes"][..., :cq],
                                seed=[0, 1], progress=False)
    np.testing.assert_array_equal(g.tokens["semantic"][:, 0], toks["semantic"])
    np.testing.assert_array_equal(g.tokens["coarse"][:, 0], toks["codes"][..., :cq])
    assert g.waves.shape == (2, 2400) and np.isfinite(g.waves).all()
    a = lm.generate_from_tokens(toks["mulan"], 0.3, semantic=toks["semantic"], seed=[0, 1], progress=False)
    np.testing.assert_array_equal(a.tokens["semantic"][:, 0], toks["semantic"])
    assert not np.array_equal(a.tokens["coarse"][:, 0], toks["codes"][..., :cq])   # sampled, not copied
    # per-clip seeds: a clip decodes the same alone as in a batch
    one = lm.generate_from_tokens(toks["mulan"][1:], 0.3, semantic=toks["semantic"][1:], seed=[1], progress=False)
    np.testing.assert_array_equal(one.tokens["coarse"][0], a.tokens["coarse"][1])
    with pytest.raises(ValueError, match="mulan_tokens must be"):
        lm.generate_from_tokens(toks["mulan"][:, :1], 0.3)
    with pytest.raises(ValueError, match="semantic tokens must be"):
        lm.generate_from_tokens(toks["mulan"], 0.3, semantic=toks["semantic"][:, :5])
    with pytest.raises(ValueError, match="need the semantic"):
        lm.generate_from_tokens(toks["mulan"], 0.3, coarse=toks["codes"][..., :cq])


def test_chain_writes_every_row_scored_with_intervals(lm, tmp_path):
    skipped = Skipped()
    report = chain_lib.diagnose(lm, _refs(), str(tmp_path), backends={"mel": get_backend("mel")}, duration_s=0.3,
                                batch_size=2, bootstrap=50, skipped=skipped)
    assert list(report["rows"]) == list(chain_lib.ROWS) and report["clips"] == 3
    assert [n for n, _ in skipped.items] == ["short"]                  # named, not fatal
    for row in chain_lib.ROWS:
        m = report["rows"][row]["metrics"]
        assert m["n"] == 3 and m["tempo_acc_octave"] is not None and m["mcc"] is not None
        assert 0.0 <= m["pulse_clarity"] <= 1.0 and -1.0 <= m["tonal_clarity"] <= 1.0
        iv = report["rows"][row]["details"]["intervals"]
        lo, hi = iv["tonal_clarity"]
        assert lo <= m["tonal_clarity"] <= hi
        if row != "real":
            rows = [json.loads(l) for l in open(tmp_path / row / "prompts.jsonl")]
            assert [r["id"] for r in rows] == ["clip0", "clip1", "clip2"] and rows[0]["bpm"] == 120.0
            assert all(os.path.exists(tmp_path / row / r["wav"]) for r in rows)
    # the codec row is the codec's own round trip of the cut clip
    want = lm.codec.reconstruct(_refs()[0].wave[:2400], 8000)[0]
    from musiclm_jax.audio.io import load_audio
    got, _ = load_audio(str(tmp_path / "codec" / "clip0.wav"))
    np.testing.assert_allclose(got, want, atol=1e-3)
    md = open(tmp_path / "chain.md").read()
    assert "| codec: codec round trip | 3 |" in md and "[" in md
    # the real row's tonal clarity is the references' own
    assert report["rows"]["real"]["metrics"]["tonal_clarity"] == pytest.approx(
        np.mean([M.tonal_clarity(r.wave[:2400], 8000) for r in _refs()[:3]]), abs=1e-6)


def test_chain_rows_and_durations_are_checked(lm, tmp_path):
    assert chain_lib.check_rows(["text", "real"]) == ["real", "text"]    # always in chain order
    with pytest.raises(ValueError, match="unknown chain row"):
        chain_lib.check_rows(["codec", "vocoder"])
    with pytest.raises(ValueError, match="lower --duration"):
        chain_lib.diagnose(lm, _refs(), str(tmp_path), backends={"mel": get_backend("mel")}, duration_s=5.0)


def test_tonal_and_pulse_clarity_tell_music_from_noise():
    sr = 16000
    noise = np.random.default_rng(0).normal(size=4 * sr).astype(np.float32) * 0.1
    triad = _tone((261.6, 329.6, 392.0), 4.0, sr)
    assert M.tonal_clarity(triad, sr) > 0.6 > M.tonal_clarity(noise, sr)
    clicks = np.zeros(4 * sr, np.float32)
    clicks[::sr // 2] = 1.0                                # 120 BPM
    clicks = np.convolve(clicks, np.hanning(64), "same").astype(np.float32) + noise * 0.01
    assert M.pulse_clarity(clicks, sr) > 0.7 > 0.3 > M.pulse_clarity(noise, sr)
    assert M.tonal_clarity(np.zeros(sr, np.float32), sr) == 0.0 == M.pulse_clarity(np.zeros(sr, np.float32), sr)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(0)
    small, large = rng.random(20) < 0.5, rng.random(2000) < 0.5
    lo, hi = M.bootstrap_interval(small, num=500)
    assert lo <= small.mean() <= hi
    lo2, hi2 = M.bootstrap_interval(large, num=500)
    assert hi2 - lo2 < (hi - lo) / 4
    assert M.bootstrap_interval([1.0]) is None
    x = rng.normal(size=50)
    lo, hi = M.bootstrap_interval(np.arange(50), lambda idx: float(np.median(x[idx])), num=200)
    assert lo <= np.median(x) <= hi


def _conditioning_cli(tmp_path, waves, sr, *stage):
    """Parsed `eval chain --conditioning [stage]` arguments over a reference folder of `waves`, and its items."""
    import argparse

    import soundfile as sf

    from musiclm_jax.eval import commands
    from musiclm_jax.eval.data import load_items
    ref = tmp_path / "ref"
    ref.mkdir()
    with open(ref / "prompts.jsonl", "w") as f:
        for i, w in enumerate(waves):
            sf.write(str(ref / f"c{i}.wav"), w, sr)
            f.write(json.dumps({"id": f"c{i}", "prompt": "a tone", "wav": f"c{i}.wav"}) + "\n")
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["eval", "chain", "--reference_dir", str(ref), "--conditioning", *stage,
                              "--out_dir", str(tmp_path / "out")])
    return args, load_items(str(ref / "prompts.jsonl"))[0]


def test_conditioning_use_measures_swapped_conditioning(lm, tmp_path, capsys):
    from musiclm_jax.eval import chain as chain_lib
    from musiclm_jax.eval import commands

    sr = lm.sample_rate
    waves = np.stack([_tone(c, lm.windows.coarse_s + 0.5, sr=sr, seed=i)
                      for i, c in enumerate([(261.6,), (329.6, 392.0), (220.0,)])])
    res = chain_lib.conditioning_use(lm, waves, sr, shift_s=0.0)
    assert set(chain_lib.CONDITIONING_CASES) <= set(res) and all(np.isfinite(res[c]) for c in chain_lib.CONDITIONING_CASES)
    # No shift: the shifted cases are the clip's own conditioning, to the last bit.
    assert res["semantic_shifted_later"] == res["own"] == res["semantic_shifted_earlier"]
    # Identical clips: another clip's tokens are the clip's own.
    same = chain_lib.conditioning_use(lm, np.stack([waves[0]] * 2), sr)
    assert same["semantic_of_another_clip"] == same["own"] == same["mulan_of_another_clip"]
    assert chain_lib.coarse_nll(lm, *(np.asarray(x) for x in _own(lm, waves))) == pytest.approx(res["own"])
    # The CLI: --conditioning on a reference folder, no generation.
    args, items = _conditioning_cli(tmp_path, waves, sr)
    out = commands._conditioning(lm, items, str(tmp_path / "out"), args)
    assert json.load(open(tmp_path / "out" / "conditioning.json"))["own"] == out["own"]
    assert "semantic_of_another_clip" in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least 2 reference clips"):
        commands._conditioning(lm, [], str(tmp_path / "x"), args)


def _own(lm, waves):
    from musiclm_jax.eval.chain import clip_tokens

    n_sem, n_ac = lm._frames(lm.windows.coarse_s)
    tok = clip_tokens(lm, waves, lm.sample_rate, lm.windows.coarse_s)
    return tok["mulan"], tok["semantic"][:, :n_sem], tok["codes"][:, :n_ac]


def test_semantic_conditioning_use_swaps_the_mulan_tokens_only(lm, tmp_path, capsys):
    from musiclm_jax.eval import commands

    sr = lm.sample_rate
    waves = np.stack([_tone(c, 1.0, sr=sr, seed=i) for i, c in enumerate([(261.6,), (329.6, 392.0), (220.0,)])])
    res = chain_lib.semantic_conditioning_use(lm, waves, sr, stretch=1.5, semitones=5)
    assert set(chain_lib.SEMANTIC_CASES) <= set(res) and all(np.isfinite(res[c]) for c in chain_lib.SEMANTIC_CASES)
    # "own" is the stage's training eval on the clips' own tokens; the unconditional case is the guidance prompt.
    toks = chain_lib.clip_tokens(lm, waves, sr, lm.windows.semantic_s)
    layout = lm.layouts["semantic"]
    inputs, targets = layout.build(mulan=toks["mulan"], semantic=toks["semantic"])
    assert res["own"] == pytest.approx(chain_lib.stage_nll(lm, "semantic", inputs, targets))
    assert res["mulan_unconditional"] == pytest.approx(
        chain_lib.stage_nll(lm, "semantic", layout.uncond_inputs(np.asarray(inputs)), targets))
    assert res["mulan_unconditional"] != res["own"]
    for case in ("mulan_of_faster_version", "mulan_of_slower_version", "mulan_of_transposed_version"):
        assert 0.0 <= res[f"mulan_changed_{case}"] <= 1.0
        if res[f"mulan_changed_{case}"] == 0.0:   # unchanged tokens cannot change the NLL
            assert res[case] == pytest.approx(res["own"])
    # Identical clips: another clip's MuLan tokens are the clip's own, to the last bit.
    same = chain_lib.semantic_conditioning_use(lm, np.stack([waves[0]] * 2), sr)
    assert same["mulan_of_another_clip"] == same["own"] and same["delta_mulan_of_another_clip"] == 0.0
    with pytest.raises(ValueError, match="stretch must be > 1"):
        chain_lib.semantic_conditioning_use(lm, waves, sr, stretch=0.8)
    # The CLI: --conditioning semantic on a reference folder.
    args, items = _conditioning_cli(tmp_path, waves, sr, "semantic")
    out = commands._conditioning(lm, items, str(tmp_path / "out"), args)
    assert json.load(open(tmp_path / "out" / "semantic_conditioning.json"))["own"] == out["own"]
    assert "mulan_of_faster_version" in capsys.readouterr().out
    args.stretch = 1.0
    with pytest.raises(ValueError, match="--stretch must be > 1"):
        commands._conditioning(lm, items, str(tmp_path / "x"), args)


def test_chain_sampling_overrides_reach_the_generated_rows(lm, tmp_path):
    import argparse

    from musiclm_jax.eval import commands
    refs = [r for r in _refs() if r.id != "short"][:2]
    rep = chain_lib.diagnose(lm, refs, str(tmp_path / "greedy"), backends={}, rows=["audio"], duration_s=0.3,
                             bootstrap=10, sampling={"temperatures": (0.0, 0.0, 0.0)})
    assert rep["sampling"]["temperatures"] == [0.0, 0.0, 0.0]
    # Greedy decoding ignores the seed; sampling at temperature 1 does not.
    rep2 = chain_lib.diagnose(lm, refs, str(tmp_path / "greedy2"), backends={}, rows=["audio"], duration_s=0.3,
                              bootstrap=10, seed=7, sampling={"temperatures": (0.0, 0.0, 0.0)})
    a = [open(tmp_path / d / "audio" / "clip0.wav", "rb").read() for d in ("greedy", "greedy2")]
    assert a[0] == a[1] and rep2["seed"] == 7
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["eval", "chain", "--reference_dir", "x", "--temperatures", "1", "-1", "0"])
    with pytest.raises(ValueError, match="--temperatures >= 0"):
        commands.decoding_overrides(args)
