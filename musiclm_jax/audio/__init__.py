"""Waveform I/O and spectral features. See io.py (loading, resampling, segmenting) and features.py (STFT, mel)."""
from musiclm_jax.audio.io import (SUPPORTED_EXTENSIONS, AudioLoadError, change_speed, is_silent, load_audio,
                                  normalize_loudness, resample, rms_dbfs, segment, to_mono, write_wav)

__all__ = ["SUPPORTED_EXTENSIONS", "AudioLoadError", "change_speed", "is_silent", "load_audio", "normalize_loudness",
           "resample", "rms_dbfs", "segment", "to_mono", "write_wav"]
