"""MuLan as a family of the shared trainer (musiclm_jax/train/trainer.py): init, loss, eval, optimizers.

Batches (see musiclm_jax/mulan/data.py): ``{"audio": f32 [B, window_samples], "ids": i32 [B, T], "mask": i32 [B, T]}``,
row i of the audio and of the caption being a pair. The loss is per batch (weight 1): with `num_microbatches > 1`
each microbatch is contrasted within itself, so keep microbatching off for MuLan unless memory forces it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import gin
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from musiclm_jax.mulan import losses
from musiclm_jax.mulan.model import MuLanConfig, MuLanModel
from musiclm_jax.train.optimizers import Optimizer, family_schedule, make_optimizer
from musiclm_jax.train.trainer import Family

GROUP = "mulan"


def contrastive_loss(model: MuLanModel, audio_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    scale = model.logit_scale_value()
    if model.cfg.loss == "softmax":
        return losses.softmax_loss(audio_emb, text_emb, scale)
    return losses.sigmoid_loss(audio_emb, text_emb, scale, model.logit_bias[...])


def batch_metrics(model: MuLanModel, batch: dict) -> tuple[jax.Array, dict]:
    audio_emb = model.embed_audio(batch["audio"])
    text_emb = model.embed_text(batch["ids"], batch["mask"])
    loss = contrastive_loss(model, audio_emb, text_emb)
    sims = losses.similarity(audio_emb, text_emb)
    t2a = losses.retrieval_ranks(sims.T)
    a2t = losses.retrieval_ranks(sims)
    metrics = {"loss": loss, "temperature": jnp.exp(-model.logit_scale_value()),
               "batch_t2a_r1": jnp.mean(t2a < 1), "batch_a2t_r1": jnp.mean(a2t < 1),
               "pos_cosine": jnp.mean(jnp.diagonal(sims))}
    return loss, metrics


@gin.configurable
@dataclasses.dataclass
class MuLanFamily(Family):
    config: MuLanConfig = dataclasses.field(default_factory=MuLanConfig)
    learning_rate: float = 3e-4
    text_learning_rate: float = 3e-5   # the pretrained text tower fine-tunes slower (ignored when frozen)
    warmup_steps: int = 100
    total_steps: int | None = None     # cosine decay to 10% at total_steps; None: constant after warmup
    # each group's `optimizer(schedule=...)`, unclipped: `clip_norm` clips the global norm over both groups
    # (gin: MuLanFamily.optimizer = @mulan/make_optimizer)
    optimizer: Callable[..., Optimizer] = functools.partial(make_optimizer, "adamw", clip_norm=None, weight_decay=1e-4)
    clip_norm: float = 1.0

    name = "mulan"

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {GROUP: MuLanModel(self.config, rngs)}

    def loss(self, models, batch, rng):
        loss, metrics = batch_metrics(models[GROUP], batch)
        return loss, jnp.ones((), jnp.float32), metrics

    def eval(self, models, batch):
        _, metrics = batch_metrics(models[GROUP], batch)
        return jnp.ones((), jnp.float32), metrics

    def optimizers(self, groups, default) -> dict[str, Optimizer]:
        def opt(lr):
            return self.optimizer(schedule=family_schedule(lr, self.warmup_steps, self.total_steps))

        main = opt(self.learning_rate)
        text = optax.set_to_zero() if self.config.freeze_text_tower else opt(self.text_learning_rate).tx
        # The text tower (top-level key "text") gets its own rate; everything else the main one.
        labels = lambda params: {k: jax.tree.map(lambda _: "text" if k == "text" else "main", v)
                                 for k, v in params.items()}
        tx = optax.multi_transform({"main": main.tx, "text": text}, labels)
        if self.clip_norm:
            tx = optax.chain(optax.clip_by_global_norm(self.clip_norm), tx)
        return {g: Optimizer(tx=tx, schedule=main.schedule) for g in groups}
