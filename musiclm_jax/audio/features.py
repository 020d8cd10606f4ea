"""STFT and log-mel features in jnp, shared by every model (codec losses, w2v-BERT input, MuLan audio tower).

Conventions match librosa's defaults (periodic Hann window, centred frames with zero padding, Slaney mel
scale and area normalisation), so features can be checked against librosa in tests. Outputs are
time-major: ``[..., frames, bins]``.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


def hann_window(win_length: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention; equals scipy's ``get_window('hann', n, fftbins=True)``)."""
    n = np.arange(win_length)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)).astype(np.float32)


def num_frames(num_samples: int, hop_length: int, center: bool = True, n_fft: int | None = None) -> int:
    if center:
        return 1 + num_samples // hop_length
    return 1 + (num_samples - n_fft) // hop_length


def stft(x: jnp.ndarray, n_fft: int, hop_length: int, win_length: int | None = None,
         center: bool = True, pad_mode: str = "constant") -> jnp.ndarray:
    """Complex STFT of ``[..., samples]`` -> ``[..., frames, n_fft // 2 + 1]`` (complex64)."""
    win_length = n_fft if win_length is None else win_length
    if win_length > n_fft:
        raise ValueError(f"win_length ({win_length}) must be <= n_fft ({n_fft})")
    x = jnp.asarray(x, jnp.float32)
    if center:
        pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        x = jnp.pad(x, pad, mode=pad_mode)
    n = x.shape[-1]
    if n < n_fft:
        raise ValueError(f"signal of {n} samples is shorter than n_fft={n_fft}; pad it or use a smaller n_fft")
    frames = 1 + (n - n_fft) // hop_length
    window = np.zeros(n_fft, np.float32)
    offset = (n_fft - win_length) // 2
    window[offset:offset + win_length] = hann_window(win_length)
    idx = np.arange(frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
    framed = x[..., idx] * window  # [..., frames, n_fft]
    return jnp.fft.rfft(framed, n=n_fft, axis=-1)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular Slaney-normalised mel filters, ``[n_fft // 2 + 1, n_mels]`` (same values as librosa's)."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}, sr={sample_rate}")
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights.T.astype(np.float32)


def mel_spectrogram(x: jnp.ndarray, sample_rate: int, n_fft: int = 1024, hop_length: int = 256,
                    n_mels: int = 64, fmin: float = 0.0, fmax: float | None = None, power: float = 2.0,
                    win_length: int | None = None, center: bool = True) -> jnp.ndarray:
    """Mel spectrogram ``[..., frames, n_mels]`` of ``[..., samples]``."""
    mag = jnp.abs(stft(x, n_fft, hop_length, win_length, center))
    if power != 1.0:
        mag = mag ** power
    return mag @ jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))


def log_mel_spectrogram(x: jnp.ndarray, sample_rate: int, n_fft: int = 1024, hop_length: int = 256,
                        n_mels: int = 64, fmin: float = 0.0, fmax: float | None = None,
                        floor: float = 1e-5, power: float = 2.0, win_length: int | None = None,
                        center: bool = True) -> jnp.ndarray:
    """Natural-log mel spectrogram ``log(max(mel, floor))``, ``[..., frames, n_mels]``."""
    mel = mel_spectrogram(x, sample_rate, n_fft, hop_length, n_mels, fmin, fmax, power, win_length, center)
    return jnp.log(jnp.maximum(mel, floor))


def chroma_frames(wave: np.ndarray, sample_rate: int, hop_length: int, n_fft: int = 2048,
                  frames: int | None = None) -> np.ndarray:
    """STFT chroma (librosa) of a mono wave, every frame L2-normalised (silence -> zeros): float32 [frames, 12].

    Frame i is centred on sample i * hop_length + hop_length // 2, the middle of the i-th hop, so it lines up with
    models whose frame i covers samples [i * hop, (i + 1) * hop). `frames` cuts or zero-pads to that many."""
    import librosa

    wave = np.asarray(wave, np.float32)[hop_length // 2:]
    if len(wave) == 0:
        wave = np.zeros(1, np.float32)
    c = librosa.feature.chroma_stft(y=wave, sr=sample_rate, n_fft=n_fft, hop_length=hop_length, norm=None).T
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-6)
    c[~np.isfinite(c).all(1)] = 0.0
    if frames is not None:
        c = np.concatenate([c, np.zeros((max(0, frames - len(c)), 12), c.dtype)])[:frames]
    return c.astype(np.float32)
