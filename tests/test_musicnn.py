"""The musicnn port (musiclm_jax/eval/musicnn.py) against the ORIGINAL checkpoints executed by TensorFlow.

Two references: tests/fixtures/musicnn_reference.npz (written by tests/fixtures/make_musicnn_reference.py, MTT and
MSD models) and the same TensorFlow graph run live here (MTT model). Both feed the same network inputs (seeded
log-mel patches) and the same audio (seeded synthetic clips through musicnn's own librosa + float16 pipeline).
"""
import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from musiclm_jax.eval import musicnn as M

try:
    PKG = M.package_dir()
except FileNotFoundError as e:
    pytest.skip(f"musicnn model files not installed ({e})", allow_module_level=True)

FIXTURES = Path(__file__).parent / "fixtures"
TAG_ATOL = 1e-4


def _load_reference_script():
    spec = importlib.util.spec_from_file_location("make_musicnn_reference", FIXTURES / "make_musicnn_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = _load_reference_script()


@pytest.fixture(scope="module")
def backend():
    return M.MusicnnBackend("MTT_musicnn")


def _net(backend, x):
    net = M._jitted()[0]
    return {k: np.asarray(v) for k, v in net(backend.params, x).items()}


def test_labels_match_package_configuration():
    tree = ast.parse((PKG / "configuration.py").read_text())
    values = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    assert M.MTT_LABELS == values["MTT_LABELS"] and M.MSD_LABELS == values["MSD_LABELS"]
    assert (values["SR"], values["FFT_HOP"], values["FFT_SIZE"], values["N_MELS"]) == (
        M.SAMPLE_RATE, M.HOP, M.N_FFT, M.N_MELS)


@pytest.mark.parametrize("model", ["MTT_musicnn", "MSD_musicnn"])
def test_matches_stored_tensorflow_reference(model):
    ref = np.load(FIXTURES / "musicnn_reference.npz")
    be = M.MusicnnBackend(model, batch_size=2 if model == "MSD_musicnn" else 32)  # 2: patches stream in chunks
    out = _net(be, R.synth_logmel())
    np.testing.assert_allclose(out["taggram"], ref[f"{model}/logmel/taggram"], atol=TAG_ATOL, rtol=0)
    np.testing.assert_allclose(out["penultimate"], ref[f"{model}/logmel/penultimate"], atol=5e-4, rtol=1e-4)
    # audio -> tags through our whole front-end (STFT, mel, float16 log) vs librosa + TensorFlow
    audio = R.synth_audio()
    outs, owner = be.patch_outputs(audio, R.SR)
    assert np.array_equal(np.bincount(owner), ref["audio_patches"])
    np.testing.assert_allclose(outs["taggram"], ref[f"{model}/audio/taggram"], atol=TAG_ATOL, rtol=0)
    # (float16 rounding of the log-mel can flip a rare entry by one ulp on either side: embeddings get more slack)
    np.testing.assert_allclose(outs["penultimate"], ref[f"{model}/audio/penultimate"], atol=2e-3, rtol=1e-3)
    # clip outputs are the per-patch means
    tags = be.classify(audio, R.SR)
    np.testing.assert_allclose(tags[0], ref[f"{model}/audio/taggram"][:2].mean(0), atol=TAG_ATOL)
    np.testing.assert_allclose(tags[1], ref[f"{model}/audio/taggram"][2], atol=TAG_ATOL)


def test_matches_live_tensorflow(backend):
    tfm = R.TFMusicnn("MTT_musicnn")
    x = R.synth_logmel()
    ref, out = tfm(x), _net(backend, x)
    np.testing.assert_allclose(out["taggram"], ref["taggram"], atol=TAG_ATOL, rtol=0)
    for key in ("penultimate", "mean_pool", "max_pool"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-3, rtol=1e-4, err_msg=key)
    # front-end: musicnn's librosa + float16 pipeline vs ours; float16 rounding may flip a rare entry by one ulp
    audio = R.synth_audio()
    mel_ref = np.concatenate([R.reference_logmel(a) for a in audio])
    mel_jax = np.concatenate(backend.log_mel(audio, R.SR))
    diff = np.abs(mel_ref - mel_jax)
    assert diff.max() <= 2.0 ** -9 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    outs, _ = backend.patch_outputs(audio, R.SR)
    np.testing.assert_allclose(outs["taggram"], tfm(mel_ref)["taggram"], atol=TAG_ATOL, rtol=0)


def test_checkpoint_reader_matches_tensorflow():
    import tensorflow as tf

    prefix = M.checkpoint_prefix("MTT_musicnn")
    ours = M.read_tf_checkpoint(prefix)
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    shapes = reader.get_variable_to_shape_map()
    assert set(shapes) == set(ours)
    for name in shapes:
        np.testing.assert_array_equal(ours[name], reader.get_tensor(name), err_msg=name)


def test_backend_api(backend):
    assert backend.name == "musicnn" and backend.sample_rate == 16000 and len(backend.class_names) == 50
    rng = np.random.default_rng(0)
    w16 = (0.05 * rng.standard_normal(16000 * 4)).astype(np.float32)
    w22 = (0.05 * rng.standard_normal(22050 * 4)).astype(np.float32)
    emb = backend.embed(np.stack([w22, w22[::-1].copy()]), 22050)
    assert emb.shape == (2, 200) and emb.dtype == np.float32 and np.all(np.isfinite(emb))
    # a list with a stereo wave and a 1 s clip (shorter than one 3 s patch: repeat-padded)
    stereo = np.stack([w16, w16])
    tags = backend.classify([stereo, w16[:16000]], 16000)
    assert tags.shape == (2, 50) and np.all((tags >= 0) & (tags <= 1))
    np.testing.assert_allclose(tags[0], backend.classify(w16, 16000)[0], atol=1e-6)
    # a full-scale tone overflows musicnn's float16 log (inf -> NaN tags in the original); ours stays finite
    tone = np.sin(2 * np.pi * 440 * np.arange(16000 * 3) / 16000).astype(np.float32)
    assert np.all(np.isfinite(backend.classify(tone, 16000)))
    assert backend.embed([], 16000).shape == (0, 200)
    pools = M.MusicnnBackend(embedding="mean_pool").embed(w16, 16000)
    assert pools.shape == (1, 753)


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown or unported"):
        M.MusicnnBackend("MTT_vgg")
    with pytest.raises(ValueError, match="NaN"):
        M.MusicnnBackend().embed([np.full(16000, np.nan, np.float32)], 16000)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="run `make`, which installs musicnn"):
        M.MusicnnBackend()


def test_float16_rounding_matches_numpy():
    import jax

    x = np.concatenate([np.logspace(-12, 6, 20000), -np.logspace(-9, 5, 1000), [0, 65504, 65519, 65520]])
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(M.round_to_float16)(x)), expected)
    # musicnn's log10(10000 x + 1) on float16 mel power. The reference is computed in float64 from the same float16
    # steps (numpy's float16 log10 takes a CPU-dependent SIMD path: AVX2 and AVX-512 differ by one ulp), and ours
    # must be within one float16 ulp of it everywhere, and equal almost everywhere.
    mel = np.logspace(-12, 0.8, 20000).astype(np.float32)
    ours = np.asarray(jax.jit(M.log_compress)(mel))
    a = (mel.astype(np.float16) * np.float16(10000)).astype(np.float16)
    theirs = np.log10((a + np.float16(1)).astype(np.float64)).astype(np.float16)
    ulp = np.spacing(np.abs(theirs)).astype(np.float32)
    theirs = theirs.astype(np.float32)
    assert np.all(np.abs(ours - theirs) <= ulp), np.abs(ours - theirs).max()
    assert (ours != theirs).mean() < 1e-3
