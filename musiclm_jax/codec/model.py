"""SoundStream: config, the generator (encoder -> RVQ -> decoder) and the GAN wrapper with its discriminators."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.codec.discriminators import Discriminators
from musiclm_jax.codec.layers import (Decoder, Encoder, STFTEncoder, VocosDecoder, decoder_context, encoder_context,
                                      stft_encoder_context, vocos_decoder_context)
from musiclm_jax.quantization.rvq import ResidualVQ, VQOutput


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """Architecture. Defaults are the tiny CPU model; gin/models/codec_paper.gin sets the paper's sizes."""
    sample_rate: int = 16000
    channels: int = 8  # C: first encoder conv; doubles at each stride (paper 32)
    strides: tuple[int, ...] = (2, 4, 5, 8)
    embed_dim: int = 32  # D: bottleneck / codebook dimension
    num_levels: int = 4  # Q (paper 12)
    codebook_size: int = 64  # K (paper 1024)
    dilations: tuple[int, ...] = (1, 3, 9)
    ema_decay: float = 0.99
    dead_threshold: float = 0.03  # fraction of uniform code usage below which a code is revived
    kmeans_iters: int = 10
    # encoder / decoder kinds: "soundstream" = the paper's sample-rate convolutions (strided / transposed);
    # "stft" encoder = causal STFT log-magnitude frames + ConvNeXt at the frame rate; "vocos" decoder = ConvNeXt at
    # the frame rate + inverse-STFT head (hop = the codec hop: one STFT frame per token).
    encoder: str = "soundstream"
    decoder: str = "soundstream"
    encoder_n_fft: int = 1280  # STFT encoder analysis window (a multiple of the hop)
    encoder_dim: int = 256
    encoder_mlp: int = 768
    encoder_layers: int = 4
    vocos_n_fft: int = 1280  # iSTFT window (a multiple of the hop; 4 x hop: 75 % overlap)
    vocos_dim: int = 256
    vocos_mlp: int = 768
    vocos_layers: int = 8
    vocos_lookahead: int = 3  # frames of future tokens one output block reads (0 .. n_fft / hop - 1)
    vocos_phase: str = "direct"  # "direct" (Vocos) or "cumulative" (phase-vocoder advance; see layers.ISTFTHead)
    # SoundStream decoder's transposed convs: "lecun" (random taps per output phase: at init the output is periodic
    # in the hop, a frame-rate comb) or "repeat" (each starts as nearest-neighbour upsampling + a conv; issue 15)
    transpose_init: str = "lecun"
    # discriminators
    wave_scales: int = 2
    wave_channels: int = 8
    wave_depth: int = 3
    wave_max_channels: int = 64
    stft_channels: int = 8
    stft_n_fft: int = 256
    stft_hop: int = 64
    stft_multipliers: tuple[int, ...] = (1, 2, 2, 4)

    def __post_init__(self):
        # gin and json give lists; tuples keep the config hashable (it is a static jit argument).
        for name in ("strides", "dilations", "stft_multipliers"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.channels < 1 or self.embed_dim < 1 or not self.strides:
            raise ValueError("CodecConfig: channels, embed_dim must be >= 1 and strides non-empty")
        if self.encoder not in ("soundstream", "stft"):
            raise ValueError(f"CodecConfig.encoder must be 'soundstream' or 'stft', got {self.encoder!r}")
        if self.decoder not in ("soundstream", "vocos"):
            raise ValueError(f"CodecConfig.decoder must be 'soundstream' or 'vocos', got {self.decoder!r}")
        hop = math.prod(self.strides)
        used = ((["encoder_n_fft"] if self.encoder == "stft" else [])
                + (["vocos_n_fft"] if self.decoder == "vocos" else []))
        for name in used:
            if getattr(self, name) % hop or getattr(self, name) < hop:
                raise ValueError(f"CodecConfig.{name} ({getattr(self, name)}) must be a multiple of the hop ({hop})")
        if self.transpose_init not in ("lecun", "repeat"):
            raise ValueError(f"CodecConfig.transpose_init must be 'lecun' or 'repeat', got {self.transpose_init!r}")
        if self.vocos_phase not in ("direct", "cumulative"):
            raise ValueError(f"CodecConfig.vocos_phase must be 'direct' or 'cumulative', got {self.vocos_phase!r}")
        if self.decoder == "vocos" and not 0 <= self.vocos_lookahead < self.vocos_n_fft // hop:
            raise ValueError(f"CodecConfig.vocos_lookahead must be in 0..{self.vocos_n_fft // hop - 1}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bitrate(self) -> float:
        """Bits per second at all Q levels."""
        return self.frame_rate * self.num_levels * math.log2(self.codebook_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


class SoundStreamModel(nnx.Module):
    """The generator: ``wave [B, S] -> codes [B, S / hop, Q] -> wave [B, S]``."""

    def __init__(self, config: CodecConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        if c.encoder == "stft":
            self.encoder = STFTEncoder(c.hop_length, c.encoder_n_fft, c.encoder_dim, c.encoder_mlp, c.encoder_layers,
                                       c.embed_dim, rngs=rngs)
        else:
            self.encoder = Encoder(c.channels, c.strides, c.embed_dim, c.dilations, rngs=rngs)
        self.quantizer = ResidualVQ(c.num_levels, c.codebook_size, c.embed_dim, decay=c.ema_decay,
                                    dead_threshold=c.dead_threshold, kmeans_iters=c.kmeans_iters, rngs=rngs)
        if c.decoder == "vocos":
            self.decoder = VocosDecoder(c.embed_dim, c.vocos_dim, c.vocos_mlp, c.vocos_layers, c.vocos_n_fft,
                                        c.hop_length, c.vocos_lookahead, phase=c.vocos_phase, rngs=rngs)
        else:
            self.decoder = Decoder(c.channels, c.strides, c.embed_dim, c.dilations, transpose_init=c.transpose_init,
                                   rngs=rngs)

    def _pad(self, wave: jax.Array) -> jax.Array:
        # Right padding to a whole frame; causal, so it never changes earlier frames.
        extra = -wave.shape[-1] % self.config.hop_length
        return jnp.pad(wave, ((0, 0), (0, extra))) if extra else wave

    def __call__(self, wave: jax.Array, level_mask: jax.Array | None = None) -> tuple[jax.Array, VQOutput, jax.Array]:
        """Training forward: (reconstruction [B, S], quantizer output, encoder latents [B, T, D])."""
        z = self.encoder(self._pad(wave))
        vq = self.quantizer(z, level_mask)
        return self.decoder(vq.quantized)[:, :wave.shape[-1]], vq, z

    def maybe_init_codebooks(self, wave: jax.Array, key: jax.Array) -> None:
        """K-means codebook init from this batch's encoder outputs, on the first call only (a `lax.cond`: later
        steps skip the extra encoder pass at run time)."""
        graphdef, state = nnx.split(self)

        def init(state):
            model = nnx.merge(graphdef, state)
            model.quantizer.kmeans_init(jax.lax.stop_gradient(model.encoder(model._pad(wave))), key)
            return nnx.state(model)

        nnx.update(self, jax.lax.cond(self.quantizer.initialized[...], lambda s: s, init, state))

    def encode(self, wave: jax.Array, num_levels: int | None = None) -> jax.Array:
        """``[B, S]`` float -> int32 codes ``[B, ceil(S / hop), num_levels]``."""
        return self.quantizer.encode(self.encoder(self._pad(wave)), num_levels)

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes ``[B, T, n]`` (n <= Q levels) -> ``[B, T * hop]``."""
        return self.decoder(self.quantizer.decode(codes))

    @property
    def encoder_context(self) -> int:
        """Left context in samples for exact chunked encoding."""
        c = self.config
        if c.encoder == "stft":
            return stft_encoder_context(c.hop_length, c.encoder_n_fft, c.encoder_layers)
        return encoder_context(c.strides, c.dilations)

    @property
    def decoder_context(self) -> int:
        """Left context in frames for exact chunked decoding."""
        c = self.config
        if c.decoder == "vocos":
            return vocos_decoder_context(c.vocos_n_fft, c.hop_length, c.vocos_layers, c.vocos_lookahead)[0]
        return decoder_context(c.strides, c.dilations)

    @property
    def decoder_lookahead(self) -> int:
        """Frames of future codes an output block depends on (0: causal; the Vocos head's overlap-add reads ahead)."""
        return self.config.vocos_lookahead if self.config.decoder == "vocos" else 0


class CodecGAN(nnx.Module):
    """What the trainer holds: the generator and its discriminators (two optimizers, see `family.py`)."""

    def __init__(self, config: CodecConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.generator = SoundStreamModel(config, rngs=rngs)
        self.discriminators = Discriminators(c.wave_scales, c.wave_channels, c.wave_depth, c.wave_max_channels,
                                             c.stft_channels, c.stft_n_fft, c.stft_hop, c.stft_multipliers,
                                             rngs=rngs)


def build_generator(config: CodecConfig, seed: int = 0) -> SoundStreamModel:
    with nnx.use_eager_sharding(False):  # annotate only; placement is the trainer's
        return SoundStreamModel(config, rngs=nnx.Rngs(seed))


def build_gan(config: CodecConfig, seed: int = 0) -> CodecGAN:
    with nnx.use_eager_sharding(False):
        return CodecGAN(config, rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode_jit(graphdef, state, wave, num_levels):
    return nnx.merge(graphdef, state).encode(wave, num_levels)


@functools.partial(jax.jit, static_argnums=(0,))
def _decode_jit(graphdef, state, codes):
    return nnx.merge(graphdef, state).decode(codes)


@functools.partial(jax.jit, static_argnums=(0,))
def _backbone_jit(graphdef, state, codes):
    model = nnx.merge(graphdef, state)
    return model.decoder.backbone(model.quantizer.decode(codes))


@functools.partial(jax.jit, static_argnums=(0,))
def _head_jit(graphdef, state, feats):
    return nnx.merge(graphdef, state).decoder.head(feats)


def jit_encode(model: SoundStreamModel, wave: jax.Array, num_levels: int | None = None) -> jax.Array:
    """`model.encode`, compiled once per (model structure, input shape, num_levels)."""
    graphdef, state = nnx.split(model)
    return _encode_jit(graphdef, state, wave, num_levels)


def jit_decode(model: SoundStreamModel, codes: jax.Array) -> jax.Array:
    graphdef, state = nnx.split(model)
    return _decode_jit(graphdef, state, codes)


def chunked_encode(model: SoundStreamModel, wave: jax.Array, chunk_frames: int,
                   num_levels: int | None = None) -> jax.Array:
    """Encodes ``[B, S]`` chunk by chunk (streaming); equals `model.encode(wave)` exactly.

    Each chunk after the first is encoded together with `encoder_context` samples of the audio before it, and the
    frames of that context are dropped: causality plus a context longer than the receptive field make every kept frame
    identical to the whole-file frame.
    """
    hop, ctx = model.config.hop_length, model.encoder_context
    wave = model._pad(wave)
    chunk = chunk_frames * hop
    out = []
    for start in range(0, wave.shape[-1], chunk):
        left = max(0, start - ctx)
        codes = jit_encode(model, wave[:, left:start + chunk], num_levels)
        out.append(codes[:, (start - left) // hop:])
    return jnp.concatenate(out, axis=1)


def chunked_decode(model: SoundStreamModel, codes: jax.Array, chunk_frames: int) -> jax.Array:
    """Decodes ``[B, T, n]`` chunk by chunk with `decoder_context` frames of left context (and `decoder_lookahead`
    frames of right context, for the Vocos head's overlap-add); equals `model.decode`."""
    hop, ctx, ahead = model.config.hop_length, model.decoder_context, model.decoder_lookahead
    if model.config.decoder == "vocos" and model.config.vocos_phase == "cumulative":
        # The head's phase is a running sum from the first frame: stream the backbone (causal, exact with its
        # context), then run the cheap per-frame head and overlap-add once over the whole sequence.
        feats = []
        for start in range(0, codes.shape[1], chunk_frames):
            left = max(0, start - ctx)
            feats.append(_backbone_jit(*nnx.split(model), codes[:, left:start + chunk_frames])[:, start - left:])
        return _head_jit(*nnx.split(model), jnp.concatenate(feats, axis=1))
    out = []
    for start in range(0, codes.shape[1], chunk_frames):
        left = max(0, start - ctx)
        end = min(start + chunk_frames, codes.shape[1])
        wave = jit_decode(model, codes[:, left:end + ahead])
        out.append(wave[:, (start - left) * hop:(end - left) * hop])
    return jnp.concatenate(out, axis=1)


def param_count(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def check_codes(codes, config: CodecConfig) -> None:
    """Raises ValueError for codes a decoder cannot take (wrong rank, too many levels, out of range)."""
    import numpy as np

    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must be [batch, frames, levels], got shape {codes.shape}")
    if not 1 <= codes.shape[-1] <= config.num_levels:
        raise ValueError(f"codes have {codes.shape[-1]} levels; this codec has 1..{config.num_levels}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= config.codebook_size):
        raise ValueError(f"codes out of range [{codes.min()}, {codes.max()}]: this codec's codebooks have "
                         f"{config.codebook_size} entries (0..{config.codebook_size - 1})")


def default_mel_scales(sample_rate: int, clip_samples: int | None = None) -> Sequence[int]:
    """Paper's 2^6..2^11 windows, without windows longer than the clip."""
    scales = [2 ** i for i in range(6, 12)]
    return tuple(s for s in scales if clip_samples is None or s <= clip_samples)
