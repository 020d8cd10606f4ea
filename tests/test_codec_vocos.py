"""The frame-rate codec (STFT encoder, Vocos decoder): exact iSTFT, causality / chunking, the comb measure, a short
training run, export round trip and the CLI's bad-input messages."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.eval import codec as ev
from musiclm_jax.codec.api import SoundStream
from musiclm_jax.codec.layers import ISTFTHead, istft, stft_frames
from musiclm_jax.codec.model import CodecConfig, build_generator, chunked_decode, chunked_encode

SR, HOP = 16000, 320
# The vocos gin file's structure at test size (small widths and depths keep compile time down).
MICRO = CodecConfig(encoder="stft", decoder="vocos", embed_dim=16, num_levels=3, codebook_size=32, encoder_dim=32,
                    encoder_mlp=64, encoder_layers=1, vocos_dim=32, vocos_mlp=64, vocos_layers=2,
                    vocos_phase="cumulative", wave_scales=1, wave_depth=2, stft_multipliers=(1, 2))


def _noise(n, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(0, 0.3, (batch, n)).astype(np.float32))


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_istft_inverts_the_matching_stft_exactly(lookahead):
    x = _noise(HOP * 24)
    y = np.asarray(istft(stft_frames(x, 4 * HOP, HOP, lookahead), 4 * HOP, HOP, lookahead))
    # Exact wherever a block has all four overlapping frames: blocks lookahead .. T - 1 - (3 - lookahead).
    lo, hi = (3 - lookahead) * HOP, x.shape[-1] - lookahead * HOP
    np.testing.assert_allclose(y[:, lo:hi], np.asarray(x)[:, lo:hi], atol=2e-5)
    # ... and not a trivial pass: a wrong lookahead does not invert.
    wrong = np.asarray(istft(stft_frames(x, 4 * HOP, HOP, lookahead), 4 * HOP, HOP, (lookahead + 1) % 4))
    assert np.abs(wrong[:, lo:hi] - np.asarray(x)[:, lo:hi]).max() > 0.1


def test_istft_head_fits_a_known_signal():
    """The head's log-magnitude / phase parametrisation reaches a two-note signal by gradient descent from
    fixed per-frame features: mel-free, plain waveform L2, 300 Adam steps."""
    import optax
    from flax import nnx

    t = np.arange(HOP * 16) / SR
    target = jnp.asarray((0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 660 * t))[None], jnp.float32)
    feats = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 32)), jnp.float32)
    with nnx.use_eager_sharding(False):
        head = ISTFTHead(32, 4 * HOP, HOP, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(head, optax.adam(2e-2), wrt=nnx.Param)
    core = slice(0, 12 * HOP)  # the last 3 blocks miss frames (they fade): fit and judge the rest

    @nnx.jit
    def step(head, opt):
        def loss(head):
            return jnp.mean((head(feats)[:, core] - target[:, core]) ** 2)
        value, grads = nnx.value_and_grad(loss)(head)
        opt.update(head, grads)
        return value

    first = float(step(head, opt))
    for _ in range(300):
        last = float(step(head, opt))
    energy = float(jnp.mean(target[:, core] ** 2))
    assert last < 0.05 * energy < first, (first, last, energy)


@pytest.mark.parametrize("phase", ["direct", "cumulative"])
def test_vocos_codec_is_causal_and_chunking_is_exact(phase):
    import dataclasses

    model = build_generator(dataclasses.replace(MICRO, vocos_phase=phase))
    wave = _noise(HOP * 30)
    codes = model.encode(wave)
    assert codes.shape == (2, 30, 3) and codes.dtype == jnp.int32
    out = model.decode(codes)
    assert out.shape == (2, 30 * HOP)
    # Encoder causal: changing the future leaves earlier codes alone.
    later = wave.at[:, 20 * HOP:].set(0.0)
    np.testing.assert_array_equal(np.asarray(model.encode(later))[:, :20], np.asarray(codes)[:, :20])
    # Decoder: block j reads codes up to j + lookahead, no further.
    look = model.decoder_lookahead
    changed = codes.at[:, 20:].set((codes[:, 20:] + 1) % MICRO.codebook_size)
    np.testing.assert_allclose(np.asarray(model.decode(changed))[:, :(20 - look) * HOP],
                               np.asarray(out)[:, :(20 - look) * HOP], atol=1e-6)
    assert np.abs(np.asarray(model.decode(changed)) - np.asarray(out))[:, (20 - look) * HOP:20 * HOP].max() > 0
    # Streaming equals whole-file, for chunk sizes shorter and longer than the context.
    for chunk in (7,):  # shorter than the context; 30 frames = 4 chunks + a partial one
        np.testing.assert_array_equal(np.asarray(chunked_encode(model, wave, chunk)), np.asarray(codes))
        np.testing.assert_allclose(np.asarray(chunked_decode(model, codes, chunk)), np.asarray(out), atol=1e-5)


def test_config_rejects_bad_vocos_settings():
    with pytest.raises(ValueError, match="multiple of the hop"):
        CodecConfig(decoder="vocos", vocos_n_fft=1000)
    with pytest.raises(ValueError, match="lookahead"):
        CodecConfig(decoder="vocos", vocos_lookahead=4)
    with pytest.raises(ValueError, match="decoder"):
        CodecConfig(decoder="hifigan")
    with pytest.raises(ValueError, match="vocos_phase"):
        CodecConfig(decoder="vocos", vocos_phase="random")


def test_vocos_gin_config_bitrate():
    import gin

    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config(["models/codec_vocos.gin"], [])
        config = CodecConfig()
    finally:
        gin.clear_config()
    assert config.encoder == "stft" and config.decoder == "vocos"
    assert config.frame_rate == 50.0 and 3000 <= config.bitrate <= 6000


# --- the comb measure --------------------------------------------------------------------------------------------

def _tone(seconds=4.0, f0=261.63, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5)) + rng.normal(0, 0.02, t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def test_comb_measure_separates_a_buzzing_signal():
    clean = _tone()
    t = np.arange(clean.size) / SR
    comb = sum(np.sin(2 * np.pi * 50 * h * t + h) for h in range(1, 80)) / 80  # harmonics of the 50 Hz frame rate
    buzzing = clean + 0.05 * comb.astype(np.float32)
    c_clean = ev.frame_rate_comb(clean, SR, 50.0)
    c_buzz = ev.frame_rate_comb(buzzing, SR, 50.0)
    assert c_clean < 2.0, c_clean
    assert c_buzz > 5 * c_clean, (c_clean, c_buzz)
    assert np.isnan(ev.frame_rate_comb(np.zeros(SR, np.float32), SR, 50.0))
    waves = np.stack([clean, _tone(f0=330.0, seed=1)])
    assert ev.mean_comb(waves, SR, 50.0) < 2.0


def test_musical_scores_against_truth():
    waves = np.stack([_tone(f0=261.63), _tone(f0=440.0, seed=2)])
    truths = [{"bpm": 120.0, "key": "C", "mode": "major"}, {"mode": "minor"}]
    res = ev.musical_scores(waves, SR, truths, 50.0, real_comb=1.0)
    assert set(res) >= {"tempo_acc", "key_acc", "mode_acc", "comb", "comb_ratio"}
    assert 0.0 <= res["key_acc"] <= 1.0 and res["comb_ratio"] == res["comb"]
    table = ev.markdown_table({"real": dict(res, comb_ratio=1.0), "soundstream": [], "codec_name": "x"})
    assert "key acc" in table and "real audio" in table


# --- a short training run of the Vocos config: trains, exports, decodes the same ----------------------------------
STEPS = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from musiclm_jax.codec.data import synthetic_tones
    from musiclm_jax.codec.family import CodecFamily
    from musiclm_jax.train import partitioning
    from musiclm_jax.train.trainer import train

    model_dir = str(tmp_path_factory.mktemp("vocos_run"))
    family = CodecFamily(config=MICRO, disc_start_step=10 ** 9, generator_lr=2e-3, warmup_steps=5, mel_bins=64)
    summary = train(family, model_dir=model_dir, batch_size=4, num_steps=STEPS, log_period=1,
                    dataset=lambda **kw: synthetic_tones(num_samples=4 * 1024, **kw), checkpoint_period=STEPS,
                    async_checkpoints=False, progress=False,
                    mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:2]))
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return model_dir, summary, rows


def test_vocos_training_reduces_mel_loss(run):
    _, summary, rows = run
    assert summary["step"] == STEPS and summary["skipped_steps"] == 0
    mel = [r["mel_loss"] for r in rows]
    assert all(np.isfinite(m) for m in mel)
    # measured: 51.9 -> 38.5 (mean of the first 3 vs the last 5 of 30 steps)
    assert np.mean(mel[-5:]) < 0.8 * np.mean(mel[:3]), (mel[:3], mel[-5:])


def test_vocos_export_round_trip(run, tmp_path):
    from musiclm_jax.codec.data import tone_clip
    from musiclm_jax.train.checkpoints import export_inference

    model_dir, _, _ = run
    report = export_inference(model_dir, str(tmp_path / "codec"))
    assert report["dropped"] == [] and report["bytes"] > 0
    a, b = SoundStream.from_checkpoint(model_dir), SoundStream.from_checkpoint(str(tmp_path / "codec"))
    assert a.config == b.config == MICRO
    wave = tone_clip(np.random.default_rng(3), 8000, SR)
    codes = a.encode(wave, SR)
    assert codes.shape == (1, 25, MICRO.num_levels)
    np.testing.assert_array_equal(codes, b.encode(wave, SR))
    np.testing.assert_allclose(a.decode(codes), b.decode(codes), atol=1e-6)
    assert a.decode(codes[..., :1], num_samples=8000).shape == (1, 8000)
    assert "Vocos" in a.describe()


def _cli(argv):
    import argparse

    from musiclm_jax.codec import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_directory_input_and_full_skip_list(run, tmp_path, capsys):
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.codec.data import tone_clip

    model_dir, _, _ = run
    audio = tmp_path / "audio"
    for name in ("encode", "reconstruct"):
        extra = ["--output", str(tmp_path / "c.npy")] if name == "encode" else ["--out_dir", str(tmp_path / "r")]
        with pytest.raises(ValueError, match=r"is a directory \(use --audio_dir"):
            os.makedirs(audio, exist_ok=True)
            _cli(["codec", name, "--model_dir", model_dir, "--input", str(audio), *extra])
    rng = np.random.default_rng(0)
    for i in range(2):
        write_wav(str(audio / f"ok{i}.wav"), tone_clip(rng, 8000, SR), SR)
    broken = [f"broken{i}.wav" for i in range(7)]  # more than the 5 an earlier version named
    for name in broken:
        (audio / name).write_bytes(b"RIFF not really a wav")
    out = tmp_path / "eval.json"
    results = _cli(["codec", "eval", "--model_dir", model_dir, "--audio_dir", str(audio), "--seconds", "0.5",
                    "--out", str(out)])
    printed = capsys.readouterr().out
    assert results["clips"] == 2
    saved = json.loads(out.read_text())
    assert sorted(s.split(" (")[0] for s in saved["skipped"]) == sorted(broken)
    assert all(name in printed for name in broken)
    assert "comb vs real" in printed and np.isfinite(saved["soundstream"][0]["comb"])
