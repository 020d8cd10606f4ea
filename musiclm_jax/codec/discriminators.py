"""SoundStream's discriminators: a multi-scale waveform discriminator and a complex-STFT discriminator.

Each discriminator returns its intermediate feature maps (for the feature-matching loss) and its logits last.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.audio.features import stft


def _conv(in_ch, out_ch, kernel, stride=1, groups=1, *, rngs, ndim=1):
    kernel = (kernel,) * ndim if isinstance(kernel, int) else tuple(kernel)
    stride = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    axes = (None,) * ndim + ("conv_in", "conv_out")
    return nnx.Conv(in_ch, out_ch, kernel, strides=stride, feature_group_count=groups, padding="SAME",
                    kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)


class WaveDiscriminator(nnx.Module):
    """MelGAN-style stack on the waveform: wide conv, grouped strided convs (x4 each), then two convs to logits."""

    def __init__(self, channels: int = 16, depth: int = 4, max_channels: int = 1024, groups: int = 4,
                 *, rngs: nnx.Rngs):
        layers, ch = [_conv(1, channels, 15, rngs=rngs)], channels
        for _ in range(depth):
            out = min(ch * 4, max_channels)
            layers.append(_conv(ch, out, 41, stride=4, groups=min(groups, ch), rngs=rngs))
            ch = out
        layers.append(_conv(ch, ch, 5, rngs=rngs))
        self.layers = nnx.List(layers)
        self.logits = _conv(ch, 1, 3, rngs=rngs)

    def __call__(self, wave: jax.Array) -> list[jax.Array]:
        x, feats = wave[..., None], []
        for layer in self.layers:
            x = jax.nn.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return feats + [self.logits(x)]


class MultiScaleWaveDiscriminator(nnx.Module):
    """`num_scales` wave discriminators on the waveform downsampled 1x, 2x, 4x... (average pooling)."""

    def __init__(self, num_scales: int = 3, channels: int = 16, depth: int = 4, max_channels: int = 1024,
                 *, rngs: nnx.Rngs):
        self.discs = nnx.List([WaveDiscriminator(channels, depth, max_channels, rngs=rngs)
                               for _ in range(num_scales)])

    def __call__(self, wave: jax.Array) -> list[list[jax.Array]]:
        outs = []
        for i, disc in enumerate(self.discs):
            if i:
                wave = nnx.avg_pool(wave[..., None], (4,), strides=(2,), padding="SAME")[..., 0]
            outs.append(disc(wave))
        return outs


class STFTResBlock(nnx.Module):
    """3x3 conv -> LeakyReLU -> strided conv, with a strided 1x1 shortcut (2-D over [time, freq])."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int], *, rngs: nnx.Rngs):
        self.conv1 = _conv(in_ch, in_ch, 3, rngs=rngs, ndim=2)
        self.conv2 = _conv(in_ch, out_ch, (stride[0] + 2, stride[1] + 2), stride=stride, rngs=rngs, ndim=2)
        self.skip = _conv(in_ch, out_ch, 1, stride=stride, rngs=rngs, ndim=2)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(jax.nn.leaky_relu(self.conv1(x), 0.2))
        return jax.nn.leaky_relu(y + self.skip(x), 0.2)


class STFTDiscriminator(nnx.Module):
    """2-D conv net on the complex STFT (real and imaginary parts as two channels), one logit per frame.

    Blocks alternate strides (1, 2) and (2, 2) over (time, frequency) with channels growing as in the paper; a last
    conv spans all remaining frequency bins.
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, channels: int = 32,
                 multipliers: Sequence[int] = (2, 4, 4, 8, 8, 16), *, rngs: nnx.Rngs):
        self.n_fft, self.hop_length = n_fft, hop_length
        self.inp = _conv(2, channels, 7, rngs=rngs, ndim=2)
        blocks, ch, bins = [], channels, n_fft // 2 + 1
        for i, m in enumerate(multipliers):
            stride = (1, 2) if i % 2 == 0 else (2, 2)
            blocks.append(STFTResBlock(ch, channels * m, stride, rngs=rngs))
            ch, bins = channels * m, -(-bins // 2)
        self.blocks = nnx.List(blocks)
        self.out = nnx.Conv(ch, 1, (1, bins), padding="VALID",
                            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                                              (None, None, "conv_in", "conv_out")),
                            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)

    def __call__(self, wave: jax.Array) -> list[jax.Array]:
        spec = stft(wave, self.n_fft, self.hop_length)  # [B, frames, bins] complex
        x = jnp.stack([spec.real, spec.imag], -1)
        feats = []
        x = jax.nn.leaky_relu(self.inp(x), 0.2)
        feats.append(x)
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats + [self.out(x)]


class Discriminators(nnx.Module):
    """All discriminators; returns a list of per-discriminator outputs (features..., logits)."""

    def __init__(self, wave_scales: int = 3, wave_channels: int = 16, wave_depth: int = 4,
                 wave_max_channels: int = 1024, stft_channels: int = 32, stft_n_fft: int = 1024,
                 stft_hop: int = 256, stft_multipliers: Sequence[int] = (2, 4, 4, 8, 8, 16), *, rngs: nnx.Rngs):
        self.wave = MultiScaleWaveDiscriminator(wave_scales, wave_channels, wave_depth, wave_max_channels, rngs=rngs)
        self.stft = STFTDiscriminator(stft_n_fft, stft_hop, stft_channels, stft_multipliers, rngs=rngs)

    def __call__(self, wave: jax.Array) -> list[list[jax.Array]]:
        return self.wave(wave) + [self.stft(wave)]
