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
import numpy as np
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


def _repeat_kernel_init(stride: int):
    """A transposed-conv kernel that starts as nearest-neighbour upsampling by `stride` then a conv at the low rate:
    every output phase gets the same taps, so a constant input gives a constant output. Each entry keeps the default
    (lecun) variance. The default init gives each of the `stride` phases its own random taps: an output periodic in
    the stride at init, and through the stack in the hop (a comb at the frame rate; see `CodecConfig.transpose_init`)."""
    base = nnx.initializers.lecun_normal()

    def init(key, shape, dtype=jnp.float32):
        kernel = base(key, shape, dtype)  # [kernel, in, out], kernel a multiple of stride
        return jnp.repeat(kernel[::stride], stride, axis=0)
    return nnx.with_partitioning(init, KERNEL_AXES)


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
    """Transposed conv that upsamples by `stride`; the right overlap ``kernel - stride`` is cut (causal).
    ``init``: "lecun" (random taps per output phase) or "repeat" (`_repeat_kernel_init`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, init: str = "lecun",
                 rngs: nnx.Rngs):
        if kernel < stride:
            raise ValueError(f"transposed conv kernel ({kernel}) must be >= stride ({stride})")
        if init == "repeat" and kernel % stride:
            raise ValueError(f"transposed conv init 'repeat' needs a kernel ({kernel}) that is a multiple of the stride")
        self.stride = stride
        kernel_init = _repeat_kernel_init(stride) if init == "repeat" else _kernel_init()
        self.conv = nnx.ConvTranspose(in_ch, out_ch, kernel, strides=stride, padding="VALID",
                                      kernel_init=kernel_init, bias_init=_bias_init(), rngs=rngs)

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

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilations: Sequence[int], *, init: str = "lecun",
                 rngs: nnx.Rngs):
        self.up = CausalConvTranspose1d(in_ch, out_ch, 2 * stride, stride, init=init, rngs=rngs)
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
                 *, transpose_init: str = "lecun", rngs: nnx.Rngs):
        plan = _channel_plan(channels, strides)[::-1]
        self.inp = CausalConv1d(embed_dim, plan[0], IO_KERNEL, rngs=rngs)
        self.blocks = nnx.List([DecoderBlock(plan[i], plan[i + 1], s, dilations, init=transpose_init, rngs=rngs)
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


# --- frame-rate modules: STFT encoder, ConvNeXt backbone, inverse-STFT head (Vocos) --------------------------------
#
# These run at the frame rate (50 Hz for hop 320), not the sample rate, so they are ~hop times cheaper per channel
# than the convolutions above, and the decoder's output is an overlap-add of windowed inverse FFTs: it has no
# transposed-convolution upsampling and so no periodic (frame-rate) artefact by construction.

DW_KERNEL = 7  # ConvNeXt depthwise kernel (frames)


def _dense_init():
    return nnx.with_partitioning(nnx.initializers.lecun_normal(), ("conv_in", "conv_out"))


def _dense(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, kernel_init=_dense_init(), bias_init=_bias_init(), rngs=rngs)


def _norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs,
                         scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("conv_out",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)))


class CausalDepthwiseConv(nnx.Module):
    """Per-channel causal conv over frames as `kernel` shifted multiply-adds (XLA's grouped convolutions are the
    slow path on CPU; this is a handful of elementwise ops)."""

    def __init__(self, dim: int, kernel: int, *, rngs: nnx.Rngs):
        self.kernel = kernel
        init = nnx.with_partitioning(nnx.initializers.normal(kernel ** -0.5), (None, "conv_out"))
        self.weight = nnx.Param(init(rngs.params(), (kernel, dim)))
        self.bias = nnx.Param(_bias_init()(rngs.params(), (dim,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        t = x.shape[1]
        xp = jnp.pad(x, ((0, 0), (self.kernel - 1, 0), (0, 0)))
        w = self.weight[...]
        # tap k multiplies the input k frames back: w[kernel - 1] is the current frame
        out = sum(xp[:, k:k + t] * w[k] for k in range(self.kernel))
        return out + self.bias[...]


class ConvNeXtBlock(nnx.Module):
    """Causal depthwise conv -> LayerNorm -> Linear(dim, mlp) -> GELU -> Linear(mlp, dim) -> layer scale, + input."""

    def __init__(self, dim: int, mlp: int, layer_scale: float, *, rngs: nnx.Rngs):
        self.dw = CausalDepthwiseConv(dim, DW_KERNEL, rngs=rngs)
        self.norm = _norm(dim, rngs)
        self.up = _dense(dim, mlp, rngs)
        self.down = _dense(mlp, dim, rngs)
        scale = nnx.with_partitioning(nnx.initializers.constant(layer_scale), ("conv_out",))
        self.gamma = nnx.Param(scale(rngs.params(), (dim,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.down(jax.nn.gelu(self.up(self.norm(self.dw(x)))))
        return x + self.gamma[...] * y


class ConvNeXtBackbone(nnx.Module):
    """``[B, T, d_in] -> [B, T, dim]``: causal conv embedding (kernel `embed_kernel`), LayerNorm, ConvNeXt blocks,
    LayerNorm."""

    def __init__(self, d_in: int, dim: int, mlp: int, num_layers: int, *, embed_kernel: int = DW_KERNEL,
                 rngs: nnx.Rngs):
        self.embed = CausalConv1d(d_in, dim, embed_kernel, rngs=rngs)
        self.norm_in = _norm(dim, rngs)
        self.blocks = nnx.List([ConvNeXtBlock(dim, mlp, 1.0 / max(num_layers, 1), rngs=rngs)
                                for _ in range(num_layers)])
        self.norm_out = _norm(dim, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = with_logical_constraint(self.norm_in(self.embed(x)), ACT_AXES)
        for block in self.blocks:
            x = with_logical_constraint(block(x), ACT_AXES)
        return self.norm_out(x)


def backbone_field(num_layers: int, embed_kernel: int = DW_KERNEL) -> int:
    """Frames of past input one backbone output reads (embedding conv + every depthwise conv)."""
    return embed_kernel - 1 + (DW_KERNEL - 1) * num_layers


ENCODER_EMBED_KERNEL = 1  # the STFT encoder's input frames already overlap (window n_fft > hop): a 1x1 embedding


def causal_frames(wave: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """``[B, S]`` (S a multiple of hop) -> windowed frames ``[B, S / hop, n_fft]``; frame t ends at sample
    ``(t + 1) * hop`` (left zero padding), so it sees only the past: the framing of a causal encoder."""
    from musiclm_jax.audio.features import hann_window

    wave = jnp.pad(wave, ((0, 0), (n_fft - hop, 0)))
    frames = (wave.shape[-1] - n_fft) // hop + 1
    idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return wave[:, idx] * hann_window(n_fft)


def ola_envelope(n_fft: int, hop: int) -> np.ndarray:
    """Steady-state sum of squared windows per position in a hop (``[hop]``): the iSTFT normaliser."""
    from musiclm_jax.audio.features import hann_window

    w2 = hann_window(n_fft).astype(np.float64) ** 2
    return w2.reshape(n_fft // hop, hop).sum(0).astype(np.float32)


def istft(spec: jax.Array, n_fft: int, hop: int, lookahead: int) -> jax.Array:
    """Inverse STFT by windowed overlap-add: complex ``[B, T, n_fft // 2 + 1]`` -> ``[B, T * hop]``.

    Frame t's window (Hann, length n_fft = k * hop) covers output blocks ``t - lookahead .. t - lookahead + k - 1``
    (block j = samples ``[j * hop, (j + 1) * hop)``), so block j is made from frames
    ``j - (k - 1 - lookahead) .. j + lookahead``: `lookahead` frames of the future (0 = causal; k - 1 = block j
    uses frames j .. j + k - 1, every one of whose causal codes has already heard block j). Output is divided by the
    steady-state sum of squared windows (the standard normalisation): exact inversion of an STFT with the same window and framing, except the blocks
    at the edges that miss some frames (they fade). Overlap-add is k shifted adds of ``[B, T, hop]`` pieces.
    """
    from musiclm_jax.audio.features import hann_window

    k = n_fft // hop
    if k * hop != n_fft or not 0 <= lookahead < k:
        raise ValueError(f"istft: n_fft ({n_fft}) must be a multiple of hop ({hop}) and 0 <= lookahead < "
                         f"{n_fft // hop}")
    b, t, _ = spec.shape
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * hann_window(n_fft)  # [B, T, n_fft]
    pieces = frames.reshape(b, t, k, hop)
    back = lookahead  # frame t's piece m lands in block t - back + m
    out = jnp.zeros((b, t, hop), frames.dtype)
    for m in range(k):
        shift = m - back  # block j gets piece m of frame j - shift
        piece = pieces[:, :, m]
        if shift > 0:
            piece = jnp.pad(piece, ((0, 0), (shift, 0), (0, 0)))[:, :t]
        elif shift < 0:
            piece = jnp.pad(piece, ((0, 0), (0, -shift), (0, 0)))[:, -shift:]
        out = out + piece
    return (out / ola_envelope(n_fft, hop)).reshape(b, t * hop)


def stft_frames(wave: jax.Array, n_fft: int, hop: int, lookahead: int) -> jax.Array:
    """The analysis STFT that `istft` with the same arguments inverts: complex ``[B, S / hop, n_fft // 2 + 1]``."""
    ahead = n_fft // hop - 1 - lookahead
    t = wave.shape[-1] // hop
    # frame t starts at block t - lookahead: pad `lookahead` blocks on the left and the rest on the right
    padded = jnp.pad(wave, ((0, 0), (lookahead * hop, ahead * hop)))
    from musiclm_jax.audio.features import hann_window

    idx = np.arange(t)[:, None] * hop + np.arange(n_fft)[None, :]
    return jnp.fft.rfft(padded[:, idx] * hann_window(n_fft), axis=-1)


class ISTFTHead(nnx.Module):
    """``[B, T, dim] -> [B, T * hop]``: a linear layer predicts per-frame log-magnitude and phase of an n_fft STFT;
    the waveform is their inverse STFT (Vocos). Magnitude = exp(log-magnitude), capped (Vocos caps at 100).

    Phase, `phase` = "direct": the layer's output is the phase of each frame (Vocos). Trained on magnitude losses
    alone, a decoder whose input is steady for a held note then outputs the same frame again and again, and an
    overlap-add of identical frames is periodic in the hop: a comb at multiples of the frame rate. "cumulative"
    (a phase vocoder): the layer predicts each bin's phase advance per frame as its nominal advance
    ``2 pi k hop / n_fft`` plus a deviation in ``(-pi, pi)``, and the phase is the running sum over frames, so a
    steady input gives a steady sinusoid at any frequency, not only at multiples of the frame rate. The running sum
    reaches back to the first frame: `chunked_decode` runs the backbone in chunks and this head once.
    """

    def __init__(self, dim: int, n_fft: int, hop: int, lookahead: int, *, phase: str = "direct", rngs: nnx.Rngs):
        if phase not in ("direct", "cumulative"):
            raise ValueError(f"ISTFTHead phase must be 'direct' or 'cumulative', got {phase!r}")
        self.n_fft, self.hop, self.lookahead, self.phase = n_fft, hop, lookahead, phase
        self.proj = _dense(dim, 2 * (n_fft // 2 + 1), rngs)
        if phase == "cumulative":  # start with no deviation: every bin a steady sinusoid at its centre frequency
            bins = n_fft // 2 + 1
            self.proj.kernel[...] = self.proj.kernel[...].at[:, bins:].set(0.0)

    def spectrum(self, x: jax.Array) -> jax.Array:
        logmag, p = jnp.split(self.proj(x), 2, axis=-1)
        mag = jnp.minimum(jnp.exp(logmag), 1e2)
        if self.phase == "cumulative":
            k_frames = self.n_fft // self.hop  # nominal advance of bin k per frame: 2 pi k / k_frames
            t = jnp.arange(x.shape[1], dtype=jnp.int32)[:, None]
            k = jnp.arange(self.n_fft // 2 + 1, dtype=jnp.int32)[None, :]
            nominal = (2 * jnp.pi / k_frames) * ((k * t) % k_frames).astype(x.dtype)
            p = nominal + jnp.cumsum(jnp.pi * jnp.tanh(p), axis=1)
        return jax.lax.complex(mag * jnp.cos(p), mag * jnp.sin(p))

    def __call__(self, x: jax.Array) -> jax.Array:
        return istft(self.spectrum(x), self.n_fft, self.hop, self.lookahead)


class VocosDecoder(nnx.Module):
    """``[B, T, embed_dim] -> [B, T * hop]``: ConvNeXt backbone at the frame rate, then the inverse-STFT head."""

    def __init__(self, embed_dim: int, dim: int, mlp: int, num_layers: int, n_fft: int, hop: int, lookahead: int,
                 *, phase: str = "direct", rngs: nnx.Rngs):
        self.backbone = ConvNeXtBackbone(embed_dim, dim, mlp, num_layers, rngs=rngs)
        self.head = ISTFTHead(dim, n_fft, hop, lookahead, phase=phase, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.head(self.backbone(z))


class STFTEncoder(nnx.Module):
    """``[B, S] -> [B, S / hop, embed_dim]``: causal STFT log-magnitude frames (window n_fft ending at each frame's
    last sample) -> linear -> ConvNeXt backbone -> linear to the codebook dimension."""

    def __init__(self, hop: int, n_fft: int, dim: int, mlp: int, num_layers: int, embed_dim: int, *,
                 rngs: nnx.Rngs):
        self.hop, self.n_fft = hop, n_fft
        self.backbone = ConvNeXtBackbone(n_fft // 2 + 1, dim, mlp, num_layers, embed_kernel=ENCODER_EMBED_KERNEL,
                                         rngs=rngs)
        self.out = _dense(dim, embed_dim, rngs)

    def __call__(self, wave: jax.Array) -> jax.Array:
        spec = jnp.fft.rfft(causal_frames(wave, self.n_fft, self.hop), axis=-1)
        feats = jnp.log(jnp.abs(spec) + 1e-4)
        return self.out(self.backbone(feats))


def stft_encoder_context(hop: int, n_fft: int, num_layers: int) -> int:
    """Left context (samples, a multiple of hop) after which a chunk's frames equal the whole-file frames."""
    field = n_fft - hop + backbone_field(num_layers, ENCODER_EMBED_KERNEL) * hop
    return hop * (math.ceil(field / hop) + 1)


def vocos_decoder_context(n_fft: int, hop: int, num_layers: int, lookahead: int) -> tuple[int, int]:
    """(left, right) context in frames for exact chunked decoding with the Vocos decoder."""
    return backbone_field(num_layers) + (n_fft // hop - 1 - lookahead) + 1, lookahead
