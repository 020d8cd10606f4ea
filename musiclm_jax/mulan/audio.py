"""MuLan audio tower: a ResNet over log-mel spectrograms of fixed windows, plus the long-audio window averaging.

Design choices (differences from a torchvision ResNet):
  * GroupNorm instead of BatchNorm: no running statistics to carry through the trainer, works at batch 1 and
    identically on one device or many; a silent window (constant log-mel) normalises to zeros, never NaN.
  * The log-mel is standardised with fixed constants (`mel_mean`, `mel_std`) so the stem sees values near unit scale.
  * `stage_sizes=(3, 4, 6, 3)`, `block="bottleneck"`, `width=64` is ResNet-50; the tiny config is 2 basic stages.
  * Optional tempogram branch (`tempo_bins`, not in the paper): mean pooling over time keeps what is present, not
    how often it recurs, so a ResNet embedding barely tells 100 from 130 BPM. The branch reads the window's
    onset-strength autocorrelation at `tempo_bins` tempi (40-240 BPM, log-spaced) through a small MLP whose last
    layer starts at zero (the tower starts as the plain one) and adds it to the pooled features.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from musiclm_jax.audio.io import WindowedAudio, windows
from musiclm_jax.audio.features import log_mel_spectrogram
from musiclm_jax.train.partitioning import with_logical_constraint


@dataclasses.dataclass(frozen=True)
class AudioConfig(WindowedAudio):
    sample_rate: int = 16000
    window_seconds: float = 10.0   # the tower's input; longer audio is averaged over windows
    stride_seconds: float = 1.0    # hop between windows of long audio
    n_fft: int = 512
    hop_length: int = 160          # 10 ms at 16 kHz
    n_mels: int = 64
    mel_mean: float = -6.0         # rough log-mel statistics of music at these settings, for input scaling
    mel_std: float = 4.0
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    block: str = "bottleneck"      # "bottleneck" (ResNet-50 style) or "basic"
    groups: int = 8                # GroupNorm groups (channels must divide)
    tempo_bins: int = 0            # > 0: a tempogram branch (see `tempogram`) added to the pooled features; 0: off

    @property
    def out_features(self) -> int:
        expansion = 4 if self.block == "bottleneck" else 1
        return self.width * 2 ** (len(self.stage_sizes) - 1) * expansion


TEMPO_RANGE_BPM = (40.0, 240.0)


def tempogram(mel: jax.Array, frame_rate: float, bins: int) -> jax.Array:
    """log-mel frames [B, T, M] -> [B, bins]: the autocorrelation of the onset strength (positive spectral flux,
    mean over bands) at the lags of `bins` tempi log-spaced over TEMPO_RANGE_BPM, unbiased (each lag divided by
    its overlap) and normalised by lag 0, so a steady beat at N BPM peaks at N (and at its multiples)."""
    import jax.numpy as jnp

    flux = jnp.maximum(jnp.diff(mel, axis=1), 0.0).mean(-1)
    flux = flux - flux.mean(-1, keepdims=True)
    t = flux.shape[-1]
    lags = 60.0 * frame_rate / np.geomspace(*TEMPO_RANGE_BPM, bins)
    if lags.max() + 1 >= t:
        raise ValueError(f"a {t}-frame window is too short for a tempogram down to {TEMPO_RANGE_BPM[0]:g} BPM: "
                         "use longer windows or tempo_bins = 0")
    spec = jnp.fft.rfft(flux, n=2 * t)
    ac = jnp.fft.irfft(spec * jnp.conj(spec), n=2 * t)[..., :t] / (t - jnp.arange(t))
    ac = ac / (ac[..., :1] + 1e-6)
    lo = np.floor(lags).astype(np.int32)
    w = jnp.asarray(lags - lo, ac.dtype)
    return ac[..., lo] * (1 - w) + ac[..., lo + 1] * w


def _conv(rngs, c_in, c_out, k, stride=1):
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    return nnx.Conv(c_in, c_out, (k, k), strides=(stride, stride), padding="SAME", use_bias=False,
                    kernel_init=nnx.with_partitioning(init, (None, None, "conv_in", "conv_out")), rngs=rngs)


def _gn(rngs, c, groups, zero=False):
    scale = nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init()
    return nnx.GroupNorm(c, num_groups=min(groups, c), epsilon=1e-5,
                         scale_init=nnx.with_partitioning(scale, ("conv_out",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)


class Block(nnx.Module):
    """Residual block (basic: 3x3,3x3; bottleneck: 1x1,3x3,1x1 x4). The last norm starts at zero (identity block)."""

    def __init__(self, c_in, c_mid, stride, kind, groups, rngs):
        c_out = c_mid * (4 if kind == "bottleneck" else 1)
        if kind == "bottleneck":
            self.convs = nnx.List([_conv(rngs, c_in, c_mid, 1), _conv(rngs, c_mid, c_mid, 3, stride),
                                   _conv(rngs, c_mid, c_out, 1)])
            self.norms = nnx.List([_gn(rngs, c_mid, groups), _gn(rngs, c_mid, groups), _gn(rngs, c_out, groups, True)])
        elif kind == "basic":
            self.convs = nnx.List([_conv(rngs, c_in, c_mid, 3, stride), _conv(rngs, c_mid, c_out, 3)])
            self.norms = nnx.List([_gn(rngs, c_mid, groups), _gn(rngs, c_out, groups, True)])
        else:
            raise ValueError(f"unknown ResNet block {kind!r}: use 'basic' or 'bottleneck'")
        self.has_proj = stride != 1 or c_in != c_out
        if self.has_proj:  # projection shortcut when the shape changes
            self.proj = _conv(rngs, c_in, c_out, 1, stride)
            self.proj_norm = _gn(rngs, c_out, groups)

    def __call__(self, x):
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(conv(y))
            if i < len(self.convs) - 1:
                y = jax.nn.relu(y)
        skip = x if not self.has_proj else self.proj_norm(self.proj(x))
        return jax.nn.relu(y + skip)


class AudioEncoder(nnx.Module):
    """waveform windows [B, window_samples] -> pooled ResNet features [B, out_features]."""

    def __init__(self, cfg: AudioConfig, rngs: nnx.Rngs):
        if cfg.width % cfg.groups:
            raise ValueError(f"audio width {cfg.width} must be a multiple of groups {cfg.groups}")
        self.cfg = cfg
        with nnx.use_eager_sharding(False):  # annotate only: placement is the trainer's
            self.stem = _conv(rngs, 1, cfg.width, 7, 2)
            self.stem_norm = _gn(rngs, cfg.width, cfg.groups)
            blocks, c_in = [], cfg.width
            expansion = 4 if cfg.block == "bottleneck" else 1
            for stage, n in enumerate(cfg.stage_sizes):
                c_mid = cfg.width * 2 ** stage
                for i in range(n):
                    blocks.append(Block(c_in, c_mid, 2 if (i == 0 and stage > 0) else 1, cfg.block, cfg.groups, rngs))
                    c_in = c_mid * expansion
            self.blocks = nnx.List(blocks)
            if cfg.tempo_bins:
                def dense(d_in, d_out, init, axes):
                    return nnx.Linear(d_in, d_out, kernel_init=nnx.with_partitioning(init, axes),
                                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[1:]),
                                      rngs=rngs)
                hidden = cfg.out_features
                self.tempo_in = dense(cfg.tempo_bins, hidden, nnx.initializers.lecun_normal(), (None, "mlp"))
                self.tempo_out = dense(hidden, cfg.out_features, nnx.initializers.zeros_init(), ("mlp", None))

    def features(self, wave: jax.Array) -> jax.Array:
        c = self.cfg
        mel = log_mel_spectrogram(wave, c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels)
        return (mel - c.mel_mean) / c.mel_std

    def __call__(self, wave: jax.Array) -> jax.Array:
        if wave.shape[-1] != self.cfg.window_samples:
            raise ValueError(f"audio tower takes windows of {self.cfg.window_samples} samples, got {wave.shape[-1]}: "
                             "use audio_windows() to cut and pad")
        mel = self.features(wave)
        x = with_logical_constraint(mel[..., None], ("batch", None, None, None))   # [B, frames, mels, 1]
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for block in self.blocks:
            x = block(x)
        pooled = x.mean(axis=(1, 2))
        if self.cfg.tempo_bins:
            tempo = tempogram(mel, self.cfg.sample_rate / self.cfg.hop_length, self.cfg.tempo_bins)
            pooled = pooled + self.tempo_out(jax.nn.relu(self.tempo_in(tempo)))
        return pooled


def audio_windows(wave: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """One clip [samples] (at cfg.sample_rate) -> windows [n, window_samples] whose embeddings are averaged
    (`audio.io.windows`: every `stride_seconds`, a last window ending at the end, short audio zero-padded)."""
    return windows(wave, cfg.window_samples, cfg.stride_samples)
