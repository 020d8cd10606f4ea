"""The melody embedder as a family of the shared trainer: init, semi-hard triplet loss, eval metrics.

Batches (melody/data.py): {"anchor", "positive", "negative"}: float32 [B, window_samples]; "line",
"negative_line": int32 [B] melody ids (so two rows of one melody are never each other's negatives). The loss is per batch
(weight 1), like MuLan's: microbatches mine their negatives within themselves. Optimizer and schedule: the gin
`make_optimizer` / `make_schedule` of the run config (no family override).
"""
from __future__ import annotations

import dataclasses

import gin
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.melody.losses import semi_hard_triplet_loss
from musiclm_jax.melody.model import MelodyConfig, MelodyEmbedder
from musiclm_jax.train.trainer import Family

GROUP = "melody"


@gin.configurable
@dataclasses.dataclass
class MelodyFamily(Family):
    config: MelodyConfig = dataclasses.field(default_factory=MelodyConfig)
    margin: float = 0.5

    name = "melody"

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {GROUP: MelodyEmbedder(self.config, rngs)}

    def _metrics(self, model, batch, deterministic, rngs=None):
        b = batch["anchor"].shape[0]
        waves = jnp.concatenate([batch["anchor"], batch["positive"], batch["negative"]], 0)
        emb = model(waves, deterministic=deterministic, rngs=rngs)
        return semi_hard_triplet_loss(emb[:b], emb[b:2 * b], emb[2 * b:], self.margin, batch.get("line"),
                                      batch.get("negative_line"))

    def loss(self, models, batch, rng):
        loss, metrics = self._metrics(models[GROUP], batch, deterministic=False, rngs=nnx.Rngs(dropout=rng))
        return loss, jnp.ones((), jnp.float32), dict(metrics, loss=loss)

    def eval(self, models, batch):
        loss, metrics = self._metrics(models[GROUP], batch, deterministic=True)
        return jnp.ones((), jnp.float32), dict(metrics, loss=loss)
