"""MuLan: audio windows, embeddings of long/short/silent audio, losses (sharded == single device), quantizer, configs."""
import dataclasses
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from musiclm_jax.mulan import losses
from musiclm_jax.quantization import embeddings as rvq_lib
from musiclm_jax.mulan.api import MuLan
from musiclm_jax.mulan.audio import AudioConfig, audio_windows
from musiclm_jax.mulan.family import MuLanFamily
from musiclm_jax.mulan.model import MuLanConfig, MuLanModel
from musiclm_jax.mulan.text import TextConfig
from musiclm_jax.train import partitioning

SR = 8000
AUDIO = AudioConfig(sample_rate=SR, window_seconds=1.0, stride_seconds=0.25, n_fft=256, hop_length=128, n_mels=16,
                    stage_sizes=(1, 1), width=8, block="basic", groups=4)
TEXT = TextConfig(vocab_size=30522, hidden=32, layers=1, heads=2, mlp=64, max_length=32, pretrained=None)


def tiny_config(**kw):
    return MuLanConfig(audio=AUDIO, text=TEXT, embed_dim=16, rvq_levels=3, rvq_codebook_size=8, **kw)


@pytest.fixture(scope="module")
def mulan():
    return MuLan(MuLanModel(tiny_config(), nnx.Rngs(0)), batch_size=8)


def noise(seconds, seed=0, sr=SR):
    return (0.1 * np.random.default_rng(seed).normal(size=int(seconds * sr))).astype(np.float32)


# --- windows --------------------------------------------------------------------------------------------------------

def test_windows_short_exact_and_long():
    w, s = AUDIO.window_samples, AUDIO.stride_samples
    short = audio_windows(noise(0.3), AUDIO)
    assert short.shape == (1, w) and np.all(short[0, int(0.3 * SR):] == 0)
    assert audio_windows(noise(1.0), AUDIO).shape == (1, w)
    wave = noise(1.6)  # 0.6 s past one window: strides at 0, .25, .5 and a last window ending at the end
    win = audio_windows(wave, AUDIO)
    assert win.shape == (4, w)
    np.testing.assert_array_equal(win[2], wave[2 * s:2 * s + w])
    np.testing.assert_array_equal(win[-1], wave[-w:])
    with pytest.raises(ValueError, match="mono"):
        audio_windows(np.zeros((2, 100)), AUDIO)
    with pytest.raises(ValueError, match="empty"):
        audio_windows(np.zeros(0), AUDIO)


def test_long_audio_embedding_is_mean_of_window_embeddings(mulan):
    wave = noise(2.1, seed=1)
    per_window = np.stack([np.asarray(mulan.model.embed_audio(jnp.asarray(w[None])))[0]
                           for w in audio_windows(wave, AUDIO)])
    mean = per_window.mean(0)
    np.testing.assert_allclose(mulan.embed_audio(wave, SR), mean / np.linalg.norm(mean), atol=1e-5)
    # Different windows really differ, so the mean is not trivially any one of them.
    assert np.max(np.abs(per_window[0] - per_window[-1])) > 1e-3


def test_short_silent_and_resampled_audio(mulan):
    short = noise(0.4, seed=2)
    padded = np.pad(short, (0, AUDIO.window_samples - short.size))
    np.testing.assert_allclose(mulan.embed_audio(short, SR), mulan.embed_audio(padded, SR), atol=1e-6)
    silent = mulan.embed_audio(np.zeros(SR // 2, np.float32), SR)
    assert np.all(np.isfinite(silent)) and abs(np.linalg.norm(silent) - 1) < 1e-4
    assert mulan.embed_audio(noise(1.0, sr=16000), 16000).shape == (16,)
    with pytest.raises(ValueError, match="NaN"):
        mulan.embed_audio(np.full(100, np.nan, np.float32), SR)


def test_text_embedding_bad_input(mulan):
    emb = mulan.embed_text(["slow jazz", "fast rock"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="empty"):
        mulan.embed_text(["slow jazz", "  "])


# --- losses ---------------------------------------------------------------------------------------------------------

def _unit_pairs(b=16, d=8, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    a = jax.random.normal(k1, (b, d))
    t = a + 0.5 * jax.random.normal(k2, (b, d))
    return a / jnp.linalg.norm(a, axis=-1, keepdims=True), t / jnp.linalg.norm(t, axis=-1, keepdims=True)


def test_softmax_loss_matches_direct_formula():
    a, t = _unit_pairs()
    scale = jnp.log(1 / 0.07)
    logits = np.asarray(a @ t.T) / 0.07
    lsm = lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))
    want = -0.5 * (np.mean(np.diag(lsm(logits))) + np.mean(np.diag(lsm(logits.T))))
    assert float(losses.softmax_loss(a, t, scale)) == pytest.approx(want, rel=1e-5)
    # Matched pairs are cheaper than shuffled ones.
    assert float(losses.softmax_loss(a, t, scale)) < float(losses.softmax_loss(a, t[::-1], scale))
    assert float(losses.sigmoid_loss(a, t, scale, -5.0)) < float(losses.sigmoid_loss(a, t[::-1], scale, -5.0))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_loss_over_global_batch_sharded_equals_single_device(kind):
    a, t = _unit_pairs(b=16)
    fn = (lambda a, t: losses.softmax_loss(a, t, 2.0)) if kind == "softmax" else \
        (lambda a, t: losses.sigmoid_loss(a, t, 2.0, -3.0))
    single = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(a, t)
    mesh = partitioning.make_mesh()
    assert mesh.size == 8
    sharding = NamedSharding(mesh, P(("data",)))
    a8, t8 = jax.device_put(a, sharding), jax.device_put(t, sharding)
    with partitioning.axis_rules(mesh):
        sharded = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(a8, t8)
    assert len(a8.addressable_shards) == 8 and a8.addressable_shards[0].data.shape[0] == 2
    np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-6)
    for g8, g1 in zip(sharded[1], single[1]):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), atol=1e-6)
    # A per-device loss (each shard contrasted only with itself) would differ: the test can fail.
    local = np.mean([float(fn(a[i:i + 2], t[i:i + 2])) for i in range(0, 16, 2)])
    assert abs(local - float(single[0])) > 1e-3


def test_family_step_on_8_devices_equals_one_device():
    from musiclm_jax.train.trainer import Trainer

    cfg = dataclasses.replace(tiny_config(), text=dataclasses.replace(TEXT, vocab_size=1000),
                              audio=dataclasses.replace(AUDIO, stage_sizes=(1,)))
    family = MuLanFamily(cfg, warmup_steps=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 1000, size=(8, 16)).astype(np.int32)
    batch = {"audio": noise(8.0).reshape(8, SR), "ids": ids, "mask": np.ones_like(ids)}
    trainer = Trainer(family, partitioning.make_mesh())
    state = trainer.init_state()
    grads8, metrics8 = jax.device_get(trainer.grads(state, trainer.device_batch(batch)))
    # Reference: the same family step on one device, with no mesh and no sharding constraints at all.
    params, rest = jax.device_get((state["params"], state["rest"]))
    rng = jax.random.fold_in(jax.random.key(trainer.seed), 0)
    grads1, _, _, metrics1 = jax.device_get(jax.jit(
        lambda p, r, b: family.grads(trainer.merge, p, r, b, rng))(params, rest, batch))
    assert metrics8["loss"] == pytest.approx(float(metrics1["loss"]), rel=1e-5)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), grads8, grads1))
    assert max(diffs) < 1e-4


# --- quantizer ------------------------------------------------------------------------------------------------------

def test_quantizer_round_trip_shapes_ranges_and_save(tmp_path, mulan):
    emb = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    report = mulan.fit_quantizer(emb)
    codes = mulan.tokens_from_embeddings(emb)
    assert codes.shape == (200, 3) and codes.dtype == np.int32 and codes.min() >= 0 and codes.max() < 8
    cos = report["cosine_by_levels"]
    assert len(cos) == 3 and cos[0] < cos[-1] <= 1.0 and report["cosine_lost"] == pytest.approx(1 - cos[-1])
    rec = rvq_lib.decode(mulan.quantizer, codes)
    assert rec.shape == (200, 16)
    path = mulan.save_quantizer(str(tmp_path))
    again = rvq_lib.load_rvq(path, 3, 8, 16)
    np.testing.assert_array_equal(rvq_lib.encode(again, emb), codes)
    # Both modalities go through the same codebooks.
    assert mulan.tokens_from_text(["a sad waltz", "a happy march"]).shape == (2, 3)
    assert mulan.tokens_from_audio(noise(1.5), SR).shape == (3,)


def test_tokens_without_quantizer_is_a_clear_error():
    m = MuLan(MuLanModel(tiny_config(), nnx.Rngs(1)))
    with pytest.raises(ValueError, match="no fitted quantizer"):
        m.tokens_from_text(["jazz"])


# --- configs --------------------------------------------------------------------------------------------------------

def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown MuLan loss"):
        tiny_config(loss="triplet")
    with pytest.raises(ValueError, match="block"):
        MuLanModel(dataclasses.replace(tiny_config(), audio=dataclasses.replace(AUDIO, block="wide")), nnx.Rngs(0))


def _params_of_gin(path, bindings=()):
    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config([path], bindings)
        family = MuLanFamily()
    finally:
        gin.clear_config()
    abstract = nnx.eval_shape(lambda: family.init(nnx.Rngs(0)))["mulan"]
    params = nnx.state(abstract, nnx.Param)
    count = lambda s: sum(math.prod(x.shape) for x in jax.tree.leaves(s))
    return family, count(params), count(nnx.state(abstract.audio, nnx.Param)), count(nnx.state(abstract.text, nnx.Param))


def test_paper_config_builds_abstractly():
    family, total, audio, text = _params_of_gin("gin/models/mulan_paper.gin")
    cfg = family.config
    assert cfg.embed_dim == 128 and (cfg.rvq_levels, cfg.rvq_codebook_size) == (12, 1024)
    assert cfg.audio.stage_sizes == (3, 4, 6, 3) and cfg.audio.window_seconds == 10.0
    assert 22e6 < audio < 25e6          # ResNet-50 without its classifier: 23.5M
    assert 105e6 < text < 115e6         # BERT-base: ~109M
    assert total == audio + text + 2048 * 128 + 128 + 768 * 128 + 128 + 2


def test_tiny_gin_uses_pretrained_minilm():
    family, total, audio, text = _params_of_gin("gin/models/mulan_tiny.gin")
    assert family.config.text.pretrained == "minilm" and family.config.text.hidden == 384
    assert audio < 1e6 and family.config.freeze_text_tower


def test_text_separation_reports_tempo_and_key_cosines_and_token_distinctness():
    from musiclm_jax.mulan import evaluate as mev

    def embed(texts):   # a text side that hears the BPM number and nothing else
        return np.stack([[1.0, float(next(w for w in t.split() if w.isdigit())) / 100.0] for t in texts])

    def tokens(texts):
        return np.stack([[int(next(w for w in t.split() if w.isdigit())) // 50] for t in texts])

    res = mev.text_separation(embed, tokens)
    assert res["key_cosine"] == pytest.approx(1.0)               # keys are invisible to it
    assert res["tempo_cosine"] < res["tempo_130_vs_160"] < 1.0     # tempi are not
    assert res["key_tokens_distinct"] == 0.0 and 0.0 < res["tempo_tokens_distinct"] < 1.0
    assert set(mev.text_separation(embed)) == {"tempo_cosine", "tempo_130_vs_160", "key_cosine",
                                               "genre_instrument_cosine"}


def test_pitch_experiment_resolves_semitones_with_the_same_tower():
    family, _, audio, _ = _params_of_gin("gin/experiments/mulan_tiny_synthcaps_pitch.gin", ["MODEL_DIR = '/tmp/m'"])
    a = family.config.audio
    assert (a.n_fft, a.n_mels) == (2048, 128)
    assert a.sample_rate / a.n_fft < 220.0 * (2 ** (1 / 12) - 1)    # STFT bins finer than a semitone at A3
    _, _, tiny_audio, _ = _params_of_gin("gin/models/mulan_tiny.gin")
    assert audio == tiny_audio


def _clicks(bpm, seconds=4.0, sr=16000):
    wave = np.zeros(int(sr * seconds), np.float32)
    burst = (np.sin(2 * np.pi * 1000 * np.arange(400) / sr) * np.hanning(400)).astype(np.float32)
    for i in range(0, len(wave) - 400, int(sr * 60 / bpm)):
        wave[i:i + 400] += burst
    return wave


def test_tempogram_peaks_at_the_beat_and_the_branch_starts_as_the_plain_tower():
    from musiclm_jax.audio.features import log_mel_spectrogram
    from musiclm_jax.mulan.audio import TEMPO_RANGE_BPM, AudioEncoder, tempogram

    bpms = np.geomspace(*TEMPO_RANGE_BPM, 32)
    for bpm in (70, 100, 130):
        mel = log_mel_spectrogram(jnp.asarray(_clicks(bpm)[None]), 16000, n_fft=1024, hop_length=320, n_mels=64)
        tg = np.asarray(tempogram(mel, 16000 / 320, 32))[0]
        assert abs(bpms[np.argmax(tg)] / bpm - 1) < 0.06, (bpm, bpms[np.argmax(tg)])
    with pytest.raises(ValueError, match="too short for a tempogram"):
        tempogram(jnp.zeros((1, 40, 8)), 50.0, 8)

    plain = AudioConfig(window_seconds=4.0, n_fft=512, hop_length=320, n_mels=32, stage_sizes=(1,), width=8,
                        block="basic")
    with_tempo = dataclasses.replace(plain, tempo_bins=16)
    a, b = AudioEncoder(plain, nnx.Rngs(0)), AudioEncoder(with_tempo, nnx.Rngs(0))
    assert not hasattr(a, "tempo_in") and b.tempo_in.kernel.shape == (16, plain.out_features)
    wave = jnp.asarray(_clicks(120)[None])
    np.testing.assert_allclose(np.asarray(b(wave)), np.asarray(a(wave)), atol=1e-6)   # zero-init last layer
    b.tempo_out.kernel.value = jnp.ones_like(b.tempo_out.kernel.value)
    assert not np.allclose(np.asarray(b(wave)), np.asarray(a(wave)))   # and it reaches the features
