"""Evaluation suite: metrics on synthetic inputs with known answers, and the `musiclm-jax eval` CLI end to end."""
import json
import os

import numpy as np
import pytest

from musiclm_jax.eval import metrics as M
from musiclm_jax.eval.backends import MelBackend, get_backend

SR = 16000


def click_track(bpm: float, seconds: float = 8.0, sr: int = SR) -> np.ndarray:
    y = np.zeros(int(sr * seconds), np.float32)
    n = np.arange(400)
    blip = (np.sin(2 * np.pi * 1000 * n / sr) * np.exp(-n / 80)).astype(np.float32)
    for t in np.arange(0, seconds, 60.0 / bpm):
        i = int(t * sr)
        y[i:i + 400] += blip[: len(y[i:i + 400])]
    return 0.5 * y


def chord_tones(tonic_pc: int, mode: str, seconds: float = 4.0, sr: int = SR) -> np.ndarray:
    """I IV V I (major) or i iv V i (minor) as additive-synth triads."""
    third = 4 if mode == "major" else 3
    chords = [(0, third, 7), (5, 5 + third, 12), (7, 11, 14), (0, third, 7)]
    seg = int(sr * seconds / 4)
    t = np.arange(seg) / sr
    out = []
    for chord in chords:
        x = np.zeros(seg)
        for st in chord:
            f = 261.63 * 2 ** ((tonic_pc + st) / 12)
            for h, a in ((1, 1.0), (2, 0.3), (3, 0.1)):
                x += a * np.sin(2 * np.pi * f * h * t)
        out.append(x * np.hanning(seg))
    y = np.concatenate(out)
    return (0.2 * y / np.abs(y).max()).astype(np.float32)


def test_fad_identical_zero_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert M.fad(a, a) == pytest.approx(0.0, abs=1e-6)
    fads = [M.fad(a + s, a) for s in (0.0, 0.5, 1.0, 2.0)]
    assert fads == sorted(fads) and fads[-1] > 20 * fads[1] / 4
    assert fads[2] == pytest.approx(8.0, rel=0.05)      # ||mu shift||^2 = 8 x 1.0^2
    # singular covariances (N < d) still give a finite value
    small, other = rng.normal(size=(5, 16)), rng.normal(size=(40, 16)) + 0.2
    (m1, s1), (m2, s2) = M.gaussian_stats(small), M.gaussian_stats(other)
    assert M.fad(small, other) == pytest.approx(M.frechet_distance(m1, s1, m2, s2), rel=1e-6)   # N-space path
    # the eigh form equals scipy's sqrtm form, also with singular covariances
    for n in (5, 300):
        x, y = rng.normal(size=(n, 16)), rng.normal(size=(n + 3, 16)) * 1.5 + 0.3
        (m1, s1), (m2, s2) = M.gaussian_stats(x), M.gaussian_stats(y)
        assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(
            M.frechet_distance(m1, s1, m2, s2, method="sqrtm"), rel=1e-4, abs=1e-4)


def test_fad_infinity_sane():
    rng = np.random.default_rng(0)
    d = 16
    ref = rng.normal(size=(4000, d))
    ev = rng.normal(size=(2000, d)) * 1.2 + 0.2
    true = M.frechet_distance(np.full(d, 0.2), np.eye(d) * 1.44, np.zeros(d), np.eye(d))   # 1.28
    res = M.fad_infinity(ev, ref, num_points=6, min_size=50, draws=3)
    assert res["slope"] > 0 and res["r2"] > 0.95          # FAD_N ~ FAD_inf + slope / N, bias shrinking with N
    assert abs(res["fad_inf"] - true) < 0.25 < abs(M.fad(ev[:50], ref) - true)
    sizes = M.fad_at_sizes(ev, ref, [50, 2000, 10_000])
    assert set(sizes) == {50, 2000} and sizes[50] > sizes[2000]


def test_kld():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(10), size=5)
    assert M.kld(p, p) == pytest.approx(0.0, abs=1e-9)
    assert M.kld(p, rng.dirichlet(np.ones(10), size=5)) > 0.05
    tags = rng.uniform(size=(3, 50))                  # multilabel sigmoids: normalised before KL
    assert M.kld(tags, tags * 0.5) == pytest.approx(0.0, abs=1e-9)


def test_mcc():
    e = np.eye(4)[:3]
    assert M.mcc(e, e * 3) == pytest.approx(1.0)
    assert M.mcc(e, -e) == pytest.approx(-1.0)


def test_tempo_adherence_on_click_tracks():
    truths = [90.0, 120.0, 140.0, 75.0]
    est = [M.estimate_tempo(click_track(b), SR) for b in truths]
    res = M.tempo_adherence(est, truths)
    assert res["tempo_acc_octave"] == 1.0 and res["tempo_acc"] >= 0.75, est
    assert M.tempo_correct(60.0, 120.0, octave=True) and not M.tempo_correct(60.0, 120.0)
    assert M.tempo_correct(40.5, 120.0, octave=True) and not M.tempo_correct(100.0, 120.0, octave=True)
    assert M.estimate_tempo(np.zeros(SR, np.float32), SR) == 0.0


def test_key_adherence_on_chords():
    cases = [(0, "major", "C"), (7, "major", "G"), (9, "minor", "A"), (2, "minor", "D")]
    est = [M.estimate_key(chord_tones(pc, mode), SR) for pc, mode, _ in cases]
    res = M.key_adherence(est, [(name, mode) for _, mode, name in cases])
    assert res["mode_acc"] == 1.0 and res["key_acc"] >= 0.75, est
    assert M.key_score("G", "major", "C", "major") == 0.5
    assert M.key_score("A", "minor", "C", "major") == 0.3
    assert M.key_score("C", "minor", "C", "major") == 0.2


def test_probe_learns_separable_toy_problem(tmp_path):
    rng = np.random.default_rng(3)
    centers = {"piano": np.array([3.0, 0, 0]), "violin": np.array([0, 3.0, 0]), "flute": np.array([0, 0, 3.0])}
    labels = [k for k in centers for _ in range(30)]
    emb = np.stack([centers[l] + rng.normal(scale=0.5, size=3) for l in labels])
    probe = M.fit_probe(emb, labels, backend="mel", attribute="instrument")
    path = probe.save(str(tmp_path / "p.npz"))
    loaded = M.Probe.load(path)
    test_labels = ["piano", "violin", "flute", "organ"]
    test = np.stack([centers["piano"], centers["violin"], centers["flute"], centers["piano"]])
    res = M.probe_accuracy(loaded, test, test_labels)
    assert res["acc"] == 0.75 and res["n"] == 4 and loaded.attribute == "instrument"   # unseen 'organ' is wrong
    with pytest.raises(ValueError):
        M.fit_probe(emb[:5], ["a"] * 5)


def test_diversity():
    e = np.random.default_rng(4).normal(size=(3, 8))
    same = np.repeat(e[:1], 3, axis=0)
    assert M.diversity(same, ["p"] * 3)["diversity"] == pytest.approx(0.0, abs=1e-9)
    assert M.diversity(e, ["p"] * 3)["diversity"] > 0.3
    assert M.diversity(e, ["a", "b", "c"])["diversity"] is None


def test_memorization_finds_planted_copy_not_random():
    rng = np.random.default_rng(5)
    train = [rng.integers(0, 1024, 500) for _ in range(20)]
    planted = np.concatenate([rng.integers(0, 1024, 40), train[7][100:260], rng.integers(0, 1024, 40)])
    near = train[3][:250].copy()
    near[::5] = rng.integers(0, 1024, 50)              # 80 % of tokens kept
    random = [rng.integers(0, 1024, 240) for _ in range(3)]
    ex = M.exact_matches([planted] + random, train, 125)
    assert ex["exact_match_rate"] == 0.25 and ex["matched_windows"] > 0
    ap = M.approximate_matches([near] + random, train, 125, threshold=0.5)
    assert ap["approx_match_rate"] == pytest.approx(2 / 5) and ap["n_windows"] == 5   # near: 2 windows; random: 1 each
    assert M.exact_matches([near], train, 125)["exact_match_rate"] == 0.0
    # the paper's prompted protocol: prompts of 10 s (250 tokens), continuation of 5 s (125)
    long = [rng.integers(0, 1024, 400) for _ in range(4)]
    items = M.memorization_prompts(long, 250, 125)
    assert len(items) == 4 and len(items[0][0]) == 250 and len(items[0][1]) == 125
    res = M.run_prompted_memorization(lambda p: long[[i for i, t in enumerate(long)
                                                       if np.array_equal(t[:250], p)][0]][250:375], long)
    assert res["exact_match_rate"] == 1.0
    res = M.prompted_memorization([rng.integers(0, 1024, 125)], [items[0][1]])
    assert res["exact_match_rate"] == 0.0 and res["approx_match_rate"] == 0.0


def test_backends():
    mel = get_backend("mel")
    waves = [click_track(120, 2.0), chord_tones(0, "major", 2.0)]
    emb = mel.embed(waves, SR)
    assert emb.shape == (2, 128) and emb.dtype == np.float32
    emb44 = mel.embed([np.asarray(__import__("musiclm_jax.audio.io", fromlist=["x"]).resample(w, SR, 44100))
                       for w in waves], 44100)
    assert np.allclose(emb, emb44, atol=0.5)
    probs = mel.classify(waves, SR)
    assert probs.shape == (2, len(mel.class_names)) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("vggish")
    with pytest.raises(ValueError, match="mulan:DIR"):
        get_backend("mulan")
    b = get_backend("module:musiclm_jax.eval.backends:MelBackend")
    assert isinstance(b, MelBackend)


def _write(path, wave, sr=SR):
    from musiclm_jax.audio.io import write_wav

    write_wav(path, wave, sr)
    return os.path.basename(path)


def test_cli_tiny_report(tmp_path, capsys):
    from musiclm_jax import cli

    ref, gen, out = tmp_path / "ref", tmp_path / "gen", tmp_path / "report"
    ref.mkdir(), gen.mkdir()
    keys = [(0, "major", "C", 120.0), (7, "major", "G", 90.0), (9, "minor", "A", 140.0), (2, "minor", "D", 100.0)]
    rows = []
    for i, (pc, mode, name, bpm) in enumerate(keys):
        wave = chord_tones(pc, mode, 4.0) + click_track(bpm, 4.0)
        wav = _write(str(ref / f"r{i}.wav"), wave)
        rows.append({"id": f"c{i}", "prompt": f"a {mode} song in {name} at {bpm:g} bpm", "wav": wav, "bpm": bpm,
                     "key": name, "mode": mode, "instrument": ["piano", "flute"][i % 2], "genre": "pop"})
    (ref / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rng = np.random.default_rng(0)
    grows = []
    for i, r in enumerate(rows):
        for s in range(2):       # two samples per prompt (diversity); id pairs it with its reference
            wave = 0.1 * rng.normal(size=SR * 2).astype(np.float32) + chord_tones(keys[i][0], keys[i][1], 2.0)
            grows.append({"id": r["id"], "prompt": r["prompt"], "wav": _write(str(gen / f"g{i}_{s}.wav"), wave),
                          "tokens": rng.integers(0, 64, 60).tolist()})
    (gen / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    grows += [{"id": "missing", "prompt": "x", "wav": "nope.wav"}, {"id": "corrupt", "prompt": "y", "wav": "bad.wav"},
              {"id": "noprompt", "wav": "g0_0.wav"}]
    (gen / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in grows) + "not json\n")
    tokens = tmp_path / "train_tokens.npy"
    np.save(tokens, np.stack([np.asarray(grows[0]["tokens"] * 2)] + [rng.integers(0, 64, 120) for _ in range(3)]))
    rc = cli.main(["eval", "--audio_dir", str(gen), "--reference_dir", str(ref), "--train_dir", str(ref),
                   "--backend", "mel", "--baselines", "real", "random", "--out_dir", str(out),
                   "--train_tokens", str(tokens), "--mem_window", "30", "--name", "toy"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["skipped"]["count"] == 4
    named = {s["item"] for s in res["skipped"]["items"]}
    assert {"missing", "corrupt"} <= named
    toy = res["systems"]["toy"]["metrics"]
    assert toy["n"] == 8 and toy["n_paired"] == 8
    assert toy["fad_mel"] > 0 and toy["kld_mel"] > 0 and toy["diversity_mel"] > 0
    assert toy["mode_acc"] is not None and toy["tempo_acc"] is not None
    assert toy["mem_exact"] == 0.125                    # one of 8 generated sequences was planted in training
    real = res["systems"]["real audio"]["metrics"]
    assert real["kld_mel"] == pytest.approx(0.0, abs=1e-6) and real["mode_acc"] == 1.0
    md = (out / "report.md").read_text()
    assert "| toy |" in md and "fad_mel" in md and "| real audio |" in md
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    assert any(f.startswith("metric_fad") for f in pngs) and any(f.startswith("samples_") for f in pngs)
    # probes: fit on the reference clips, then used by eval
    assert cli.main(["eval", "fit-probe", "--reference_dir", str(ref), "--backend", "mel",
                     "--attribute", "instrument", "--out_dir", str(tmp_path / "probes")]) == 0
    assert cli.main(["eval", "--audio_dir", str(gen), "--reference_dir", str(ref), "--out_dir", str(out),
                     "--probe", str(tmp_path / "probes" / "probe_mel_instrument.npz"), "--no_plots"]) == 0
    assert json.loads((out / "results.json").read_text())["systems"]["gen"]["metrics"]["instrument_acc"] is not None


def test_cli_bad_args(tmp_path, capsys):
    from musiclm_jax import cli

    assert cli.main(["eval", "--audio_dir", str(tmp_path)]) == 2
    assert "--out_dir" in capsys.readouterr().err
    assert cli.main(["eval", "--audio_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")]) == 2
    assert "prompts.jsonl" in capsys.readouterr().err
    assert cli.main(["eval", "--baselines", "real", "--out_dir", str(tmp_path / "o")]) == 2
    assert "--reference_dir" in capsys.readouterr().err
    assert cli.main(["eval", "--audio_dir", str(tmp_path), "--out_dir", str(tmp_path / "o"),
                     "--backend", "nosuch"]) == 2
