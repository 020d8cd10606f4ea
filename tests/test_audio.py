"""Waveform I/O and jnp features against librosa and against known signals."""
import librosa
import numpy as np
import pytest
import soundfile as sf

from musiclm_jax.audio import (AudioLoadError, is_silent, load_audio, normalize_loudness, resample, rms_dbfs,
                               segment, to_mono, write_wav)
from musiclm_jax.audio.features import log_mel_spectrogram, mel_filterbank, stft
from musiclm_jax.audio.plot import save_spectrogram_png


def sine(freq=440.0, sr=16000, seconds=1.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(wave, sr):
    spec = np.abs(np.fft.rfft(wave))
    return np.argmax(spec) * sr / len(wave)


@pytest.mark.parametrize("fmt,ext,tol", [("WAV", "wav", 1e-4), ("FLAC", "flac", 1e-4), ("OGG", "ogg", 0.05),
                                         ("MP3", "mp3", 0.1)])
def test_load_every_format_stereo_mixdown_and_resample(tmp_path, fmt, ext, tol):
    left, right = sine(440, 22050), sine(440, 22050, amp=0.3)
    path = tmp_path / f"x.{ext}"
    sf.write(path, np.stack([left, right], axis=1), 22050, format=fmt)
    stereo, sr = load_audio(path, mono=False)
    assert sr == 22050 and stereo.shape[0] == 2 and stereo.dtype == np.float32
    mono, sr = load_audio(path, sample_rate=16000)
    assert sr == 16000 and mono.ndim == 1
    assert abs(mono.shape[0] - 16000) < 1200  # mp3 adds encoder padding
    assert abs(dominant_freq(mono, 16000) - 440) < 3
    assert abs(np.sqrt(np.mean(mono[2000:-2000] ** 2)) - 0.4 / np.sqrt(2)) < tol


def test_bad_files_raise_one_clear_error(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    good = tmp_path / "good.wav"
    sf.write(good, sine(), 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:40])  # header only
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[:-1000])  # cut mid-data: libsndfile alone would not notice
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(100, np.nan, np.float32), 16000, subtype="FLOAT")
    for path, reason in [(tmp_path / "missing.wav", "not found"), (empty, "empty"), (garbage, "corrupt"),
                         (truncated, "no audio samples|corrupt|truncated"), (cut, "truncated"),
                         (nan, "NaN")]:
        with pytest.raises(AudioLoadError, match=reason) as err:
            load_audio(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_resample_keeps_pitch_and_length():
    out = resample(sine(1000, 24000), 24000, 16000)
    assert out.shape == (16000,)
    assert abs(dominant_freq(out, 16000) - 1000) < 2
    assert resample(np.zeros((2, 480), np.float32), 24000, 16000).shape == (2, 320)
    with pytest.raises(ValueError):
        resample(sine(), 0, 16000)


def test_mono_loudness_silence():
    stereo = np.stack([sine(amp=0.2), sine(amp=0.4)])
    np.testing.assert_allclose(to_mono(stereo), sine(amp=0.3), atol=1e-6)
    norm = normalize_loudness(sine(amp=0.01), target_dbfs=-20.0)
    assert abs(rms_dbfs(norm) - (-20.0)) < 0.01
    loud = normalize_loudness(np.r_[np.zeros(1000), 1.0, np.zeros(1000)].astype(np.float32), target_dbfs=-3.0)
    assert np.max(np.abs(loud)) <= 0.99 + 1e-6  # peak-safe
    assert is_silent(np.zeros(100)) and not is_silent(sine())
    assert np.array_equal(normalize_loudness(np.zeros(10)), np.zeros(10))


def test_segment_pads_or_drops_the_tail():
    x = np.arange(10)
    assert segment(x, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert segment(x, 4, pad=False).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert segment(x, 4, hop=3, pad=False).tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert segment(np.arange(3), 4).tolist() == [[0, 1, 2, 0]]
    assert segment(np.arange(3), 4, pad=False).shape == (0, 4)
    assert segment(np.zeros((2, 10)), 5).shape == (2, 2, 5)
    with pytest.raises(ValueError):
        segment(x, 0)


def test_stft_and_mel_match_librosa():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000).astype(np.float32)
    ours = np.asarray(stft(x, 512, 128))
    ref = librosa.stft(x, n_fft=512, hop_length=128).T
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(mel_filterbank(16000, 512, 40, 20.0, 7600.0),
                               librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=20.0, fmax=7600.0).T,
                               atol=1e-6)
    mel_ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=512, hop_length=128, n_mels=40).T
    ours_log = np.asarray(log_mel_spectrogram(x, 16000, 512, 128, 40))
    np.testing.assert_allclose(ours_log, np.log(np.maximum(mel_ref, 1e-5)), atol=2e-3)
    batch = np.asarray(log_mel_spectrogram(np.stack([x, x]), 16000, 512, 128, 40))
    assert batch.shape == (2, 1 + 4000 // 128, 40)


def test_write_wav_and_spectrogram_png(tmp_path):
    path = write_wav(tmp_path / "sub" / "a.wav", sine() * 3, 16000)  # clipped, not wrapped
    back, sr = load_audio(path)
    assert sr == 16000 and np.max(back) <= 1.0 and np.max(back) > 0.99
    png = save_spectrogram_png(tmp_path / "a.png", [back, sine(880)], 16000, titles=["a", "b"])
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
