"""The codec as a family of the shared trainer: two parameter groups (generator, discriminator), two optimizers.

The stable recipe, all gin-configurable in `CodecFamily`:
* the generator trains on reconstruction (+ commitment) alone for `disc_start_step` steps; then the discriminators
  start and the generator adds the adversarial and feature-matching terms (hinge GAN, paper weights 1 / 100 / 1);
* Adam with beta1 = 0.5, global-norm gradient clipping per group (`optimizer`), warmup + cosine learning rate;
* the trainer's NaN/Inf guard drops a non-finite step entirely (parameters, optimizer state *and* codebooks);
* codebooks: k-means on the first batch, then EMA updates and dead-code replacement after every step.

The step counter that gates the discriminator lives in the discriminator group's non-parameter state, so it is
checkpointed and restored with everything else (with microbatching it counts microbatches).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.codec import losses
from musiclm_jax.codec.discriminators import Discriminators
from musiclm_jax.codec.model import CodecConfig, SoundStreamModel, default_mel_scales
from musiclm_jax.quantization.rvq import usage_and_perplexity
from musiclm_jax.train.optimizers import Optimizer, family_schedule, make_optimizer
from musiclm_jax.train.trainer import Family, split_rest


class StepCounter(nnx.BatchStat):
    """Train steps seen (non-parameter state, carried by the trainer)."""


class CodecDiscriminator(nnx.Module):
    """The discriminator group: the discriminators and the step counter that gates them."""

    def __init__(self, config: CodecConfig, *, rngs: nnx.Rngs):
        c = config
        self.nets = Discriminators(c.wave_scales, c.wave_channels, c.wave_depth, c.wave_max_channels,
                                   c.stft_channels, c.stft_n_fft, c.stft_hop, c.stft_multipliers, rngs=rngs)
        self.steps = StepCounter(jnp.zeros((), jnp.int32))

    def __call__(self, wave: jax.Array) -> list[list[jax.Array]]:
        return self.nets(wave)


@gin.configurable
@dataclasses.dataclass
class CodecFamily(Family):
    """SoundStream training: see the module docstring. Batches are ``{"audio": float32 [batch, samples]}``."""
    config: CodecConfig = dataclasses.field(default_factory=CodecConfig)
    # loss weights (paper: adversarial 1, feature matching 100, reconstruction 1)
    adversarial_weight: float = 1.0
    feature_weight: float = 100.0
    reconstruction_weight: float = 1.0
    commitment_weight: float = 1.0
    mel_scales: tuple[int, ...] | None = None  # None: 2^6..2^11 windows not longer than the clip
    mel_bins: int = 64  # mel bands per scale (at most n_fft / 4): more bands resolve pitch on the long windows
    stft_weight: float = 0.0  # weight of a linear-frequency log-magnitude STFT loss (windows 512..2048); 0 = off
    quantizer_dropout: float = 1.0  # probability an example trains with a random number of levels
    disc_start_step: int = 1000
    # optimizers (one per group, each `optimizer(schedule=...)`; gin: CodecFamily.optimizer = @codec/make_optimizer)
    generator_lr: float = 3e-4
    discriminator_lr: float = 3e-4
    optimizer: Callable[..., Optimizer] = functools.partial(make_optimizer, "adamw", clip_norm=1.0, b1=0.5, b2=0.9)
    warmup_steps: int = 100
    total_steps: int | None = None  # cosine decay to 10% at total_steps; None: constant after warmup

    name = "codec"

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        with nnx.use_eager_sharding(False):  # annotate only; placement is the trainer's
            return {"generator": SoundStreamModel(self.config, rngs=rngs),
                    "discriminator": CodecDiscriminator(self.config, rngs=rngs)}

    def optimizers(self, groups, default) -> dict[str, Optimizer]:
        return {g: self.optimizer(schedule=family_schedule(lr, self.warmup_steps, self.total_steps))
                for g, lr in (("generator", self.generator_lr), ("discriminator", self.discriminator_lr))}

    def tokens(self, batch: dict) -> int:  # audio samples, so tokens_per_sec / sample_rate is the real-time factor
        return int(np.prod(np.shape(batch["audio"])))

    def _scales(self, num_samples: int):
        return tuple(self.mel_scales) if self.mel_scales else default_mel_scales(self.config.sample_rate,
                                                                                 num_samples)

    @property
    def adversarial(self) -> bool:
        """Whether this run's step holds the discriminators: not when they would start at or after the schedule's
        end (`total_steps`), as in a reconstruction-only run, whose step then compiles without them (their params
        are still created and saved, so a later, longer run can switch them on)."""
        return self.total_steps is None or self.disc_start_step < self.total_steps

    def grads(self, merge, params, rest, batch, rng):
        wave = _check_audio(batch)
        k_init, k_drop, k_dead = jax.random.split(rng, 3)
        models = merge(params, rest)
        gen = models["generator"]
        gen.maybe_init_codebooks(wave, k_init)
        rest = split_rest(models)
        adv_on = (models["discriminator"].steps[...] >= self.disc_start_step) & self.adversarial
        mask = gen.quantizer.dropout_mask(wave.shape[0], k_drop, self.quantizer_dropout)
        scales = self._scales(wave.shape[-1])
        sr = self.config.sample_rate

        def gen_loss(gen_params):
            m = merge({"generator": gen_params, "discriminator": params["discriminator"]}, rest)
            recon, vq, _ = m["generator"](wave, mask)
            mel = losses.multiscale_mel_loss(wave, recon, sr, scales, n_mels=self.mel_bins)
            spec = jnp.zeros(())
            if self.stft_weight:
                spec = losses.multiscale_stft_loss(
                    wave, recon, tuple(s for s in (512, 1024, 2048) if s <= wave.shape[-1]) or (wave.shape[-1],))

            def adversarial(recon):
                fake, real = m["discriminator"](recon), m["discriminator"](wave)
                adv = losses.generator_hinge_loss([f[-1] for f in fake])
                feat = losses.feature_matching_loss([r[:-1] for r in real], [f[:-1] for f in fake])
                return adv, feat

            off = lambda _: (jnp.zeros(()), jnp.zeros(()))  # noqa: E731
            adv, feat = jax.lax.cond(adv_on, adversarial, off, recon) if self.adversarial else off(recon)
            loss = (self.reconstruction_weight * (mel + self.stft_weight * spec)
                    + self.commitment_weight * vq.commit_loss + self.adversarial_weight * adv
                    + self.feature_weight * feat)
            return loss, (recon, vq, dict(mel_loss=mel, stft_loss=spec, commit_loss=vq.commit_loss,
                                          gen_adv_loss=adv, feature_loss=feat))

        (g_loss, (recon, vq, metrics)), g_grads = jax.value_and_grad(gen_loss, has_aux=True)(params["generator"])
        recon = jax.lax.stop_gradient(recon)

        def disc_loss(disc_params):
            m = merge({"generator": params["generator"], "discriminator": disc_params}, rest)
            real, fake = m["discriminator"](wave), m["discriminator"](recon)
            return losses.discriminator_hinge_loss([r[-1] for r in real], [f[-1] for f in fake])

        def disc_off(disc_params):
            return jnp.zeros(()), jax.tree.map(jnp.zeros_like, disc_params)

        d_loss, d_grads = (jax.lax.cond(adv_on, jax.value_and_grad(disc_loss), disc_off, params["discriminator"])
                           if self.adversarial else disc_off(params["discriminator"]))

        # Codebook EMA + dead codes, and the step counter: the new non-parameter state.
        models = merge(params, rest)
        revived = models["generator"].quantizer.ema_update(vq.stats, k_dead)
        models["discriminator"].steps[...] += 1
        usage, perplexity = usage_and_perplexity(vq.codes[..., :1], self.config.codebook_size)
        metrics = dict(metrics, loss=g_loss, disc_loss=d_loss, disc_active=adv_on.astype(jnp.float32),
                       codes_revived=revived.astype(jnp.float32), level0_perplexity=perplexity[0])
        return {"generator": g_grads, "discriminator": d_grads}, split_rest(models), 1.0, metrics

    def eval(self, models, batch):
        """Sums over the batch (the trainer divides by the batch size): quality at every level count 1..Q."""
        wave = _check_audio(batch)
        gen = models["generator"]
        return jnp.asarray(wave.shape[0], jnp.float32), quality_metrics(gen, wave, self.config.codebook_size,
                                                                       reduce="sum")


def quality_metrics(gen: SoundStreamModel, wave: jax.Array, codebook_size: int, reduce: str = "sum") -> dict:
    """Mel distance, SI-SNR and LSD at 1..Q levels, plus per-level usage and perplexity (the bitrate curve)."""
    sr, q = gen.config.sample_rate, gen.config.num_levels
    codes = gen.encode(wave)
    out = {}
    agg = jnp.sum if reduce == "sum" else jnp.mean
    scale = wave.shape[0] if reduce == "sum" else 1
    for n in range(1, q + 1):
        recon = gen.decode(codes[..., :n])[:, :wave.shape[-1]]
        scales = tuple(s for s in (256, 512, 1024, 2048) if s <= wave.shape[-1]) or (wave.shape[-1],)
        out[f"mel_distance/q{n}"] = agg(losses.mel_distance(wave, recon, sr, scales))
        out[f"si_snr/q{n}"] = agg(losses.si_snr(wave, recon))
        out[f"lsd/q{n}"] = agg(losses.log_spectral_distance(wave, recon, min(1024, wave.shape[-1])))
    usage, perplexity = usage_and_perplexity(codes, codebook_size)
    for level in range(q):
        out[f"usage/level{level}"] = usage[level] * scale
        out[f"perplexity/level{level}"] = perplexity[level] * scale
    return out


def _check_audio(batch: dict) -> jax.Array:
    if "audio" not in batch:
        raise ValueError(f"codec batches need an 'audio' array [batch, samples]; got keys {sorted(batch)}")
    wave = batch["audio"]
    if wave.ndim != 2:
        raise ValueError(f"codec batch 'audio' must be [batch, samples], got shape {wave.shape}")
    return wave.astype(jnp.float32)
