"""SoundStream encoder and decoder: causal 1-D convolutions, channel-last ``[batch, length, channels]``.

Causal means every output sample depends only on input samples at or before it: convolutions pad on the left only,
and transposed convolutions trim their right overlap. That is what makes chunked (streaming) encode/decode equal the
whole-file result; `encoder_context` / `decoder_context` give the left context a chunk needs for that.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.train.partitioning import with_logical_constraint

# Conv kernels are [width, in, out]. The codec is small (paper size ~10M params), so its weights stay replicated:
# 'conv_in' / 'conv_out' are not in the rule table, which maps unknown names to replicated.
KERNEL_AXES = (None, "conv_in", "conv_out")
ACT_AXES = ("batch", "length", None)
RES_KERNEL = 7  # residual-unit kernel width (paper)
IO_KERNEL = 7  # first encoder / last decoder conv width
BOTTLENECK_KERNEL = 3


def _kernel_init():
    return nnx.with_partitioning(nnx.initializers.lecun_normal(), KERNEL_AXES)


def _bias_init():
    return nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",))


class CausalConv1d(nnx.Module):
    """Conv1d with left-only padding ``(kernel - stride)`` for strided, ``(kernel - 1) * dilation`` otherwise.

    With stride S and a length divisible by S the output has exactly ``length / S`` frames, frame i ending at
    input sample ``i * S + S - 1``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 rngs: nnx.Rngs):
        if stride > 1 and dilation > 1:
            raise ValueError("CausalConv1d: use either stride or dilation, not both")
        self.pad = (kernel - 1) * dilation if stride == 1 else kernel - stride
        self.conv = nnx.Conv(in_ch, out_ch, kernel, strides=stride, kernel_dilation=dilation, padding="VALID",
                             kernel_init=_kernel_init(), bias_init=_bias_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (self.pad, 0), (0, 0)))
        return self.conv(x)


class CausalConvTranspose1d(nnx.Module):
    """Transposed conv that upsamples by `stride`; the right overlap ``kernel - stride`` is cut (causal)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        if kernel < stride:
            raise ValueError(f"transposed conv kernel ({kernel}) must be >= stride ({stride})")
        self.stride = stride
        self.conv = nnx.ConvTranspose(in_ch, out_ch, kernel, strides=stride, padding="VALID",
                                      kernel_init=_kernel_init(), bias_init=_bias_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        length = x.shape[1]
        return self.conv(x)[:, :length * self.stride]


class ResidualUnit(nnx.Module):
    """ELU -> dilated causal conv (k=7) -> ELU -> 1x1 conv, plus the input."""

    def __init__(self, channels: int, dilation: int, *, rngs: nnx.Rngs):
        self.dilated = CausalConv1d(channels, channels, RES_KERNEL, dilation=dilation, rngs=rngs)
        self.pointwise = CausalConv1d(channels, channels, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.pointwise(jax.nn.elu(self.dilated(jax.nn.elu(x))))
        return x + y


class EncoderBlock(nnx.Module):
    """Three residual units (dilations 1, 3, 9) then a strided conv (kernel 2S) that downsamples by S."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilations: Sequence[int], *, rngs: nnx.Rngs):
        self.units = nnx.List([ResidualUnit(in_ch, d, rngs=rngs) for d in dilations])
        self.down = CausalConv1d(in_ch, out_ch, 2 * stride, stride=stride, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for unit in self.units:
            x = unit(x)
        return self.down(jax.nn.elu(x))


class DecoderBlock(nnx.Module):
    """A transposed conv (kernel 2S) that upsamples by S, then three residual units (mirror of EncoderBlock)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilations: Sequence[int], *, rngs: nnx.Rngs):
        self.up = CausalConvTranspose1d(in_ch, out_ch, 2 * stride, stride, rngs=rngs)
        self.units = nnx.List([ResidualUnit(out_ch, d, rngs=rngs) for d in dilations])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.up(jax.nn.elu(x))
        for unit in self.units:
            x = unit(x)
        return x


def _channel_plan(channels: int, strides: Sequence[int]) -> list[int]:
    # Channels double at every downsampling: C, 2C, 4C, ... (paper: C=32 -> 512 after four blocks).
    return [channels * 2 ** i for i in range(len(strides) + 1)]


class Encoder(nnx.Module):
    """``[batch, samples]`` -> ``[batch, samples / hop, embed_dim]`` with hop = prod(strides)."""

    def __init__(self, channels: int, strides: Sequence[int], embed_dim: int, dilations: Sequence[int] = (1, 3, 9),
                 *, rngs: nnx.Rngs):
        plan = _channel_plan(channels, strides)
        self.inp = CausalConv1d(1, plan[0], IO_KERNEL, rngs=rngs)
        self.blocks = nnx.List([EncoderBlock(plan[i], plan[i + 1], s, dilations, rngs=rngs)
                                for i, s in enumerate(strides)])
        self.out = CausalConv1d(plan[-1], embed_dim, BOTTLENECK_KERNEL, rngs=rngs)

    def __call__(self, wave: jax.Array) -> jax.Array:
        x = with_logical_constraint(self.inp(wave[..., None]), ACT_AXES)
        for block in self.blocks:
            x = with_logical_constraint(block(x), ACT_AXES)
        return self.out(jax.nn.elu(x))


class Decoder(nnx.Module):
    """``[batch, frames, embed_dim]`` -> ``[batch, frames * hop]`` (mirror of Encoder)."""

    def __init__(self, channels: int, strides: Sequence[int], embed_dim: int, dilations: Sequence[int] = (1, 3, 9),
                 *, rngs: nnx.Rngs):
        plan = _channel_plan(channels, strides)[::-1]
        self.inp = CausalConv1d(embed_dim, plan[0], IO_KERNEL, rngs=rngs)
        self.blocks = nnx.List([DecoderBlock(plan[i], plan[i + 1], s, dilations, rngs=rngs)
                                for i, s in enumerate(reversed(strides))])
        self.out = CausalConv1d(plan[-1], 1, IO_KERNEL, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = with_logical_constraint(self.inp(z), ACT_AXES)
        for block in self.blocks:
            x = with_logical_constraint(block(x), ACT_AXES)
        return jnp.tanh(self.out(jax.nn.elu(x)))[..., 0]


def encoder_context(strides: Sequence[int], dilations: Sequence[int] = (1, 3, 9)) -> int:
    """Left context (samples, a multiple of the hop) after which a chunk's frames equal the whole-file frames."""
    field, scale = IO_KERNEL - 1, 1  # samples of past input that reach one output, at the current rate
    for s in strides:
        field += sum((RES_KERNEL - 1) * d for d in dilations) * scale
        field += (2 * s - 1) * scale
        scale *= s
    field += (BOTTLENECK_KERNEL - 1) * scale
    hop = math.prod(strides)
    return hop * (math.ceil(field / hop) + 1)


def decoder_context(strides: Sequence[int], dilations: Sequence[int] = (1, 3, 9)) -> int:
    """Left context (frames) after which a chunk's decoded samples equal the whole-file samples."""
    need = IO_KERNEL - 1  # at the output sample rate, walking back from the last conv
    for s in strides:  # decoder blocks run in reversed stride order, so walking back visits them in order
        need += sum((RES_KERNEL - 1) * d for d in dilations)
        need = math.ceil(need / s) + 1  # a transposed conv output reads its own input step and the one before
    return need + IO_KERNEL - 1 + 1
