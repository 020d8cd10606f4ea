"""`SoundStream`: the codec as a tokenizer. ``encode(wave, sample_rate) -> codes [batch, frames, levels]``,
``decode(codes) -> wave``; `num_levels` picks the bitrate at call time (quantizer dropout trained every prefix).

    codec = SoundStream.from_checkpoint("runs/codec_tiny")
    codes = codec.encode(wave, sample_rate=44100, num_levels=2)   # resampled, mixed down, checked
    audio = codec.decode(codes)                                   # [batch, samples] at codec.sample_rate
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.codec.model import (CodecConfig, SoundStreamModel, build_generator, check_codes, chunked_decode,
                                     chunked_encode, jit_decode, jit_encode)

log = logging.getLogger(__name__)
def _as_batch(wave, sample_rate: int, target_rate: int, allow_resample: bool) -> np.ndarray:
    """Validates and normalises input audio to float32 ``[batch, samples]`` at `target_rate`."""
    from musiclm_jax.audio.io import as_mono_batch, resample

    wave = as_mono_batch(wave, floating_only=True)
    if sample_rate != target_rate:
        if not allow_resample:
            raise ValueError(f"wave is at {sample_rate} Hz but the codec runs at {target_rate} Hz: resample it "
                             "or pass resample=True")
        wave = resample(wave.astype(np.float32), sample_rate, target_rate)
    peak = float(np.abs(wave).max())
    if peak > 1.0:
        log.warning("input peaks at %.2f (> 1.0): clipping to [-1, 1]", peak)
        wave = np.clip(wave, -1.0, 1.0)
    return wave.astype(np.float32)


class SoundStream:
    """Inference wrapper around a trained `SoundStreamModel` (jitted once per input shape and level count)."""

    def __init__(self, model: SoundStreamModel):
        self.model = model
        self.config: CodecConfig = model.config

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def random(cls, config: CodecConfig | None = None, seed: int = 0) -> "SoundStream":
        """An untrained codec (for speed measurements and tests)."""
        return cls(build_generator(config or CodecConfig(), seed))

    @classmethod
    def from_checkpoint(cls, model_dir: str, step: int | None = None,
                        config: CodecConfig | None = None) -> "SoundStream":
        """Loads the generator of a codec trained with the shared trainer (`musiclm-jax codec train`); the
        architecture is `config`, else the one its checkpoint records."""
        from musiclm_jax.codec.family import CodecFamily
        from musiclm_jax.train.loader import load_for_inference, saved_config

        if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
            raise ValueError(f"{model_dir!r} holds no checkpoints/: pass the model_dir of `musiclm-jax codec train`")
        config = config or saved_config(model_dir, CodecConfig, step)
        return cls(load_for_inference(CodecFamily(config=config), model_dir, step).models["generator"])

    # -- properties -----------------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    def bitrate(self, num_levels: int | None = None) -> float:
        """Bits per second at `num_levels` (default all)."""
        n = self.config.num_levels if num_levels is None else num_levels
        return self.config.bitrate * n / self.config.num_levels

    # -- encode / decode ------------------------------------------------------------------------------------------
    def encode(self, wave, sample_rate: int, num_levels: int | None = None, *, resample: bool = True,
               chunk_frames: int | None = None) -> np.ndarray:
        """Float audio ``[samples]`` / ``[batch, samples]`` / ``[batch, channels, samples]`` -> int32 codes
        ``[batch, ceil(samples' / hop), num_levels]`` (samples' after resampling to the codec's rate).

        `chunk_frames` encodes in streaming chunks (same result, bounded memory for long audio).
        """
        n = self.model.quantizer.check_levels(self.num_levels if num_levels is None else num_levels)
        wave = _as_batch(wave, sample_rate, self.sample_rate, resample)
        if chunk_frames:
            return np.asarray(chunked_encode(self.model, jnp.asarray(wave), chunk_frames, n))
        return np.asarray(jit_encode(self.model, jnp.asarray(wave), n))

    def decode(self, codes, num_samples: int | None = None, *, chunk_frames: int | None = None) -> np.ndarray:
        """Codes ``[batch, frames, n]`` (n <= Q; fewer levels = lower bitrate) -> float32 ``[batch, frames * hop]``,
        cut to `num_samples` when given."""
        codes = np.asarray(codes)
        if codes.ndim == 2:  # a single example [frames, levels]
            codes = codes[None]
        check_codes(codes, self.config)
        codes = jnp.asarray(codes, jnp.int32)
        if chunk_frames:
            wave = chunked_decode(self.model, codes, chunk_frames)
        else:
            wave = jit_decode(self.model, codes)
        wave = np.asarray(wave)
        return wave[:, :num_samples] if num_samples is not None else wave

    def reconstruct(self, wave, sample_rate: int, num_levels: int | None = None) -> np.ndarray:
        """decode(encode(wave)) with the input's length (at the codec's sample rate)."""
        batch = _as_batch(wave, sample_rate, self.sample_rate, True)
        return self.decode(self.encode(batch, self.sample_rate, num_levels), num_samples=batch.shape[-1])

    def short_name(self) -> str:
        """The architecture in a few words, for tables: 'SoundStream' or e.g. 'STFT enc + Vocos dec'."""
        c = self.config
        if c.encoder == "soundstream" and c.decoder == "soundstream":
            return "SoundStream"
        return f"{'STFT' if c.encoder == 'stft' else 'conv'} enc + {'Vocos' if c.decoder == 'vocos' else 'conv'} dec"

    def describe(self) -> str:
        c = self.config
        return (f"{self.short_name()} {c.sample_rate} Hz, hop {c.hop_length} ({c.frame_rate:g} Hz frames), "
                f"{c.num_levels} x {c.codebook_size} codes, {self.bitrate() / 1000:g} kbps at all levels")

    def to_json(self) -> str:
        return json.dumps({"config": json.loads(self.config.to_json()), "bitrate": self.bitrate()})
