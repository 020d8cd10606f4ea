"""Embedding / classifier backends for evaluation, behind one small protocol.

A backend turns waveforms (any sample rate; it resamples itself) into clip embeddings ``[n, d]`` (FAD, diversity,
probes) and optionally into class probabilities ``[n, C]`` (KLD). Specs for `get_backend`:

    "mel"                    log-mel mean + std statistics: deterministic, model-free, cheap (tests, CPU smoke runs)
    "mulan:DIR"              our MuLan audio tower (`musiclm_jax.mulan.api.MuLan.from_checkpoint(DIR)`), embed only
    "musicnn[:MODEL]"        the musicnn tagger port (`musiclm_jax.eval.musicnn.MusicnnBackend`): embed + 50 tags
                             (MODEL: MTT_musicnn, the default, or MSD_musicnn)
    "module:pkg.mod:factory" any callable returning a Backend (a hook for TRILL / VGGish / PANNs ports)
"""
from __future__ import annotations

import importlib
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from musiclm_jax.audio.io import resample, to_mono


@runtime_checkable
class Backend(Protocol):
    name: str
    sample_rate: int            # the rate the backend wants; callers pass any rate, the backend resamples
    class_names: list[str] | None  # None when the backend cannot classify (no KLD)

    def embed(self, waves: list[np.ndarray] | np.ndarray, sample_rate: int) -> np.ndarray:
        """[n, d] float32 clip embeddings."""
        ...

    def classify(self, waves: list[np.ndarray] | np.ndarray, sample_rate: int) -> np.ndarray:
        """[n, C] class probabilities (tags may be multilabel, i.e. independent sigmoids)."""
        ...


def as_wave_list(waves: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """A 1-D wave, a [n, samples] array or a list of waves (mono or [channels, samples]) -> list of mono float32."""
    if isinstance(waves, np.ndarray):
        if waves.ndim == 1:
            return [waves.astype(np.float32)]
        if waves.ndim == 2:
            return [w.astype(np.float32) for w in waves]
        raise ValueError(f"waves must be [samples] or [n, samples], got shape {waves.shape}")
    return [to_mono(np.asarray(w, np.float32)) for w in waves]


def prepare(waves, sample_rate: int, target_rate: int) -> list[np.ndarray]:
    """Mono float32 waves at `target_rate`; non-finite samples are an error naming the wave."""
    out = []
    for i, w in enumerate(as_wave_list(waves)):
        if not np.all(np.isfinite(w)):
            raise ValueError(f"wave {i} contains NaN or Inf samples")
        out.append(resample(w, int(sample_rate), int(target_rate)))
    return out


def log_mel_frames(wave: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 320,
                   n_mels: int = 64) -> np.ndarray:
    """Log-mel power ``[frames, n_mels]`` in numpy (periodic Hann, centred frames, Slaney mel like librosa)."""
    from musiclm_jax.audio.features import hann_window, mel_filterbank

    wave = np.asarray(wave, np.float32)
    wave = np.pad(wave, (n_fft // 2, n_fft // 2))
    if wave.shape[0] < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * hann_window(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return np.log(power @ mel_filterbank(sample_rate, n_fft, n_mels) + 1e-6).astype(np.float32)


class MelBackend:
    """Model-free baseline: per-band mean and std over time of the log-mel spectrogram (64 bands -> 128-d).

    `classify` gives a coarse *spectral-envelope* distribution (mean mel power pooled into 16 bands, normalised):
    not semantic tags, but a deterministic stand-in so KLD can be computed without any model.
    """

    name = "mel"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, n_classes: int = 16):
        self.sample_rate = int(sample_rate)
        self.n_mels = n_mels
        self.n_classes = n_classes
        self.class_names = [f"mel_band_{i:02d}" for i in range(n_classes)]

    def _mels(self, waves, sample_rate):
        return [log_mel_frames(w, self.sample_rate, n_mels=self.n_mels)
                for w in prepare(waves, sample_rate, self.sample_rate)]

    def embed(self, waves, sample_rate: int) -> np.ndarray:
        mels = self._mels(waves, sample_rate)
        if not mels:
            return np.zeros((0, 2 * self.n_mels), np.float32)
        return np.stack([np.concatenate([m.mean(0), m.std(0)]) for m in mels]).astype(np.float32)

    def classify(self, waves, sample_rate: int) -> np.ndarray:
        mels = self._mels(waves, sample_rate)
        if not mels:
            return np.zeros((0, self.n_classes), np.float32)
        power = np.stack([np.exp(m).mean(0) for m in mels])                     # [n, n_mels]
        pooled = power.reshape(len(mels), self.n_classes, -1).sum(-1) + 1e-12   # [n, C]
        return (pooled / pooled.sum(-1, keepdims=True)).astype(np.float32)


class MuLanBackend:
    """Our MuLan audio tower: the L2-normalised mean of window embeddings (`MuLan.embed_audio`). Embed only."""

    class_names = None

    def __init__(self, model_dir: str | None = None, mulan=None):
        if mulan is None:
            from musiclm_jax.mulan.api import MuLan

            mulan = MuLan.from_checkpoint(model_dir)
        self.mulan = mulan
        self.name = "mulan"
        self.sample_rate = int(mulan.cfg.audio.sample_rate)

    def embed(self, waves, sample_rate: int) -> np.ndarray:
        waves = prepare(waves, sample_rate, self.sample_rate)
        if not waves:
            return np.zeros((0, int(self.mulan.cfg.embed_dim)), np.float32)
        return np.stack([self.mulan.embed_audio(w, self.sample_rate) for w in waves]).astype(np.float32)

    def classify(self, waves, sample_rate: int) -> np.ndarray:
        raise ValueError("the mulan backend has no classifier: use musicnn (or a module: backend) for KLD")


def get_backend(spec: str, **kwargs) -> Backend:
    """A backend from its spec: "mel", "mulan:DIR", "musicnn", "module:pkg.mod:factory" (see the module doc)."""
    spec = (spec or "").strip()
    kind, _, arg = spec.partition(":")
    if kind == "mel":
        return MelBackend(**kwargs)
    if kind == "mulan":
        if not arg:
            raise ValueError("the mulan backend needs its model directory: --backend mulan:DIR")
        return MuLanBackend(arg)
    if kind == "musicnn":
        try:
            mod = importlib.import_module("musiclm_jax.eval.musicnn")
        except ModuleNotFoundError as e:
            if e.name in ("musiclm_jax.eval.musicnn",):
                raise ValueError("the musicnn backend is not available in this install "
                                 "(musiclm_jax/eval/musicnn.py is missing): use --backend mel or mulan:DIR") from e
            raise ValueError(f"the musicnn backend needs {e.name!r}: install it, or use --backend mel") from e
        if arg:
            kwargs.setdefault("model", arg)        # musicnn:MSD_musicnn
        return mod.MusicnnBackend(**kwargs)
    if kind == "module":
        mod_name, _, fn_name = arg.rpartition(":")
        if not mod_name or not fn_name:
            raise ValueError(f"bad backend spec {spec!r}: use module:package.module:factory")
        try:
            factory = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"backend {spec!r}: cannot load {mod_name}.{fn_name} ({e})") from e
        backend = factory(**kwargs)
        for attr in ("name", "sample_rate", "embed"):
            if not hasattr(backend, attr):
                raise ValueError(f"backend {spec!r}: the factory's object has no {attr!r} (see eval/backends.py)")
        if not hasattr(backend, "class_names"):
            backend.class_names = None
        return backend
    raise ValueError(f"unknown backend {spec!r}: use mel, musicnn, mulan:DIR or module:package.module:factory")


def can_classify(backend) -> bool:
    return bool(getattr(backend, "class_names", None)) and callable(getattr(backend, "classify", None))
