"""Waveform I/O: robust loading (wav/flac/ogg/mp3), resampling, mono mixdown, loudness, segmenting.

Waves are float32 numpy arrays, ``[samples]`` when mono, ``[channels, samples]`` otherwise. Every loading
failure raises `AudioLoadError` with the file and the reason, so batch jobs can skip, count and name bad items.
"""
from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import tempfile
from typing import Any

import numpy as np
import soundfile as sf

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
_log = logging.getLogger(__name__)


class AudioLoadError(ValueError):
    """A file that cannot be used as audio (missing, empty, corrupt, truncated, non-finite)."""


def _fail(path: Any, reason: str) -> AudioLoadError:
    return AudioLoadError(f"{path}: {reason}")


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True
               ) -> tuple[np.ndarray, int]:
    """Reads an audio file; resamples to `sample_rate` when given; mixes down to mono when `mono`.

    Returns ``(wave, sample_rate)``. Raises `AudioLoadError` for anything that is not usable audio.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise AudioLoadError(directory_message(path))
    if not os.path.exists(path):
        raise _fail(path, "file not found")
    if os.path.getsize(path) == 0:
        raise _fail(path, "empty file (0 bytes)")
    check_wav_complete(path)
    try:
        with _quiet_stderr(path.lower().endswith(".mp3")):
            data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors are RuntimeError/LibsndfileError/EOFError, by format
        raise AudioLoadError(decode_failure_message(path, e)) from e
    if data.shape[0] == 0:
        raise _fail(path, "no audio samples (header only or truncated)")
    if not np.all(np.isfinite(data)):
        raise _fail(path, "contains NaN or Inf samples")
    wave = data.T  # [channels, samples]
    if mono:
        wave = to_mono(wave)
    if sample_rate is not None and sample_rate != sr:
        wave = resample(wave, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def directory_message(path: str, flag: str | None = None) -> str:
    """The one line for a folder given where an audio file belongs; `flag`: the command's folder option, if any."""
    return f"{path} is a directory, not an audio file" + (f" (use {flag} {path})" if flag else "")


def reject_directories(paths, folder_flag: str | None = None) -> None:
    """Raises `AudioLoadError` (one line) for the first of `paths` that is a folder, naming `folder_flag`."""
    for p in paths:
        if os.path.isdir(os.path.expanduser(os.fspath(p))):
            raise AudioLoadError(directory_message(os.fspath(p), folder_flag))


def decode_failure_message(path: str, error: Exception) -> str:
    """'could not decode X (corrupt or unsupported audio)', plus libsndfile's reason when it says something true.

    For a file it cannot decode, libsndfile says "File does not exist or is not a regular file (possibly a pipe?)":
    the file exists (checked before), so that text is dropped rather than passed on.
    """
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    detail = detail.replace(f"Error opening {path!r}: ", "")
    if "does not exist" in detail or "not a regular file" in detail:
        detail = ""
    return f"could not decode {path} (corrupt or unsupported audio{': ' + detail[:120] if detail else ''})"


@contextlib.contextmanager
def _quiet_stderr(active: bool = True):
    """Holds back what C code (libmpg123 inside libsndfile) prints to file descriptor 2 while decoding.

    On success the held-back text is written out after all (nothing another thread printed meanwhile is lost); on
    failure it is dropped: the caller's one-line error replaces the decoder's notes. A no-op when fd 2 cannot be
    duplicated (no real stderr).
    """
    if not active:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    ok = False
    with tempfile.TemporaryFile() as held:
        try:
            sys.stderr.flush()
            os.dup2(held.fileno(), 2)
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)


def check_wav_complete(path: str | os.PathLike) -> None:
    """Raises `AudioLoadError` for a WAV cut off mid-data: libsndfile would read the part that is there silently.

    Compares the data chunk's declared size with the bytes present; other formats are left to the decoder.
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size = os.path.getsize(path)
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_len = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                have = size - fh.tell()
                if chunk_len not in (0, 0xFFFFFFFF) and have < chunk_len:  # 0 / max: streaming writers' placeholders
                    raise _fail(path, f"truncated (header declares {chunk_len} audio bytes, file has {have})")
                return
            fh.seek(chunk_len + (chunk_len & 1), 1)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """``[channels, samples]`` -> ``[samples]`` by averaging; mono input passes through."""
    wave = np.asarray(wave, dtype=np.float32)
    return wave if wave.ndim == 1 else wave.mean(axis=0)


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality (soxr) resampling along the last axis."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    wave = np.asarray(wave, dtype=np.float32)
    if sr_in == sr_out:
        return wave
    import soxr

    if wave.ndim == 1:
        return soxr.resample(wave, sr_in, sr_out).astype(np.float32)
    return soxr.resample(wave.T, sr_in, sr_out).T.astype(np.float32)  # soxr wants [samples, channels]


def change_speed(wave: np.ndarray, ratio: float) -> np.ndarray:
    """The wave played `ratio` times faster (resampled, as a tape at another speed): pitch and tempo x ratio,
    length / ratio. ratio = 2 ** (k / 12) transposes by k semitones."""
    if ratio <= 0:
        raise ValueError(f"speed ratio must be positive, got {ratio}")
    return resample(wave, ratio * 1000.0, 1000.0)  # read at one rate, written at another


def check_samples(wave: np.ndarray, what: str = "wave") -> np.ndarray:
    """The one check of in-memory audio: one-line errors for an empty wave or NaN/Inf samples; returns `wave`."""
    if wave.size == 0 or wave.shape[-1] == 0:
        raise ValueError(f"{what} is empty (0 samples): give at least a few milliseconds of audio")
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"{what} contains NaN or Inf samples: clean it (e.g. np.nan_to_num) or skip this file")
    return wave


def as_mono_batch(wave, what: str = "wave", floating_only: bool = False) -> np.ndarray:
    """[samples], [batch, samples] or [batch, channels, samples] (channels averaged) -> float32 [batch, samples],
    checked by `check_samples`. `floating_only` refuses integer PCM (whose scale the caller cannot guess)."""
    wave = np.asarray(wave)
    if floating_only and not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"{what} must be floating point in [-1, 1], got dtype {wave.dtype}")
    wave = wave.astype(np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    elif wave.ndim == 3:
        wave = wave.mean(axis=1)
    elif wave.ndim != 2:
        raise ValueError(f"{what} must be [samples], [batch, samples] or [batch, channels, samples]; got {wave.shape}")
    return check_samples(wave, what)

def rms_dbfs(wave: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (a sine of amplitude 1 is -3 dBFS)."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(wave, dtype=np.float64))))) if np.size(wave) else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


def is_silent(wave: np.ndarray, threshold_db: float = -60.0) -> bool:
    return rms_dbfs(wave) < threshold_db


def normalize_loudness(wave: np.ndarray, target_dbfs: float = -20.0, peak: float = 0.99) -> np.ndarray:
    """Scales to an RMS level of `target_dbfs`, then lowers the gain if needed so no sample exceeds `peak`.

    Silent input is returned unchanged (there is no level to normalise).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if is_silent(wave, -100.0):
        return wave
    gain = 10.0 ** ((target_dbfs - rms_dbfs(wave)) / 20.0)
    max_abs = float(np.max(np.abs(wave))) * gain
    if max_abs > peak:
        gain *= peak / max_abs
    return (wave * gain).astype(np.float32)


def segment(wave: np.ndarray, length: int, hop: int | None = None, pad: bool = True) -> np.ndarray:
    """Cuts ``[..., samples]`` into fixed-length windows ``[..., n, length]`` every `hop` samples.

    With `pad`, the tail is zero-padded into a last window (and audio shorter than `length` gives one window);
    without it, the incomplete tail is dropped (and short audio gives zero windows).
    """
    if length <= 0:
        raise ValueError(f"segment length must be positive, got {length}")
    hop = length if hop is None else hop
    if hop <= 0:
        raise ValueError(f"segment hop must be positive, got {hop}")
    wave = np.asarray(wave)
    n = wave.shape[-1]
    if pad:
        count = max(1, -(-max(n - length, 0) // hop) + 1)
        total = (count - 1) * hop + length
        if total > n:
            wave = np.concatenate([wave, np.zeros(wave.shape[:-1] + (total - n,), wave.dtype)], axis=-1)
    else:
        count = 0 if n < length else (n - length) // hop + 1
    starts = np.arange(count) * hop
    idx = starts[:, None] + np.arange(length)[None, :]
    return wave[..., idx]


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> str:
    """Writes 16-bit PCM wav (``[samples]`` or ``[channels, samples]``), clipping to [-1, 1]. Returns the path."""
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sf.write(path, wave.T if wave.ndim == 2 else wave, int(sample_rate), subtype="PCM_16")
    return path


def list_audio_files(folder: str) -> list[str]:
    """The audio files under `folder` (recursively, sorted); one-line errors for a missing or empty folder."""
    if not os.path.isdir(folder):
        raise ValueError(f"audio folder {folder!r} does not exist: pass a directory of audio files")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(SUPPORTED_EXTENSIONS))
    if not files:
        raise ValueError(f"no audio files ({', '.join(SUPPORTED_EXTENSIONS)}) under {folder!r}")
    return files


def load_clips(files: list[str], sample_rate: int, min_samples: int = 1) -> tuple[list[np.ndarray], list[str]]:
    """Loads mono waves at `sample_rate`; returns (waves, names of skipped files) with one log line for the skips."""
    waves, skipped = [], []
    for path in files:
        try:
            wave, _ = load_audio(path, sample_rate)
        except AudioLoadError as e:
            skipped.append(f"{os.path.basename(path)} ({e})")
            continue
        if wave.shape[-1] < min_samples or is_silent(wave):
            skipped.append(f"{os.path.basename(path)} (silent or shorter than {min_samples} samples)")
            continue
        waves.append(wave)
    if skipped:
        _log.warning("skipped %d of %d audio files: %s", len(skipped), len(files), "; ".join(skipped))
    return waves, skipped


class WindowedAudio:
    """Mixin of a config with `sample_rate`, `window_seconds` and `stride_seconds` (a model that embeds fixed
    windows of long audio): the same sizes in samples."""

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def stride_samples(self) -> int:
        return int(round(self.stride_seconds * self.sample_rate))


def windows(wave: np.ndarray, window: int, stride: int, what: str = "waveform") -> np.ndarray:
    """One mono clip [samples] -> windows [n, window] for models that embed fixed windows.

    Audio shorter than a window is zero-padded at the end into one window. Longer audio gives windows every
    `stride` samples; when the stride does not land on the end, one more window ending exactly at the last sample
    is added, so every window is full of audio and the tail is not ignored."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono {what} [samples], got shape {wave.shape}: mix down first (to_mono)")
    check_samples(wave, what)
    if wave.shape[0] <= window:
        return segment(wave, window, pad=True)
    out = segment(wave, window, stride, pad=False)
    if (wave.shape[0] - window) % stride:
        out = np.concatenate([out, wave[None, -window:]], axis=0)
    return out
