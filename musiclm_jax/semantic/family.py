"""w2v-BERT as a family of the shared trainer (musiclm_jax/train/trainer.py).

Batches are ``{"audio": f32 [B, samples]}`` at the model's sample rate (16 kHz): the codec's dataset functions
(`synthetic_tones`, `audio_folder`, `synthcaps_audio` in musiclm_jax/codec/data.py) serve as they are.
Losses are summed over masked frames with the masked-frame count as the weight, so microbatching is exact.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import gin
import jax
import numpy as np
from flax import nnx

from musiclm_jax.semantic.w2v_bert import W2vBertConfig, new_model, num_params
from musiclm_jax.train.optimizers import Optimizer, family_schedule, make_optimizer
from musiclm_jax.train.trainer import Family

GROUP = "w2v_bert"


def _audio(batch: dict) -> jax.Array:
    if "audio" not in batch:
        raise ValueError(f"w2v-BERT batches need an 'audio' entry [batch, samples], got keys {sorted(batch)}")
    return batch["audio"]


@gin.configurable
@dataclasses.dataclass
class W2vBertFamily(Family):
    config: W2vBertConfig = dataclasses.field(default_factory=W2vBertConfig)
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    total_steps: int | None = None   # cosine decay to 10% at total_steps; None: constant after warmup
    # `optimizer(schedule=...)`; gin: W2vBertFamily.optimizer = @w2v_bert/make_optimizer
    optimizer: Callable[..., Optimizer] = functools.partial(make_optimizer, "adamw", clip_norm=1.0,
                                                            weight_decay=1e-2, b2=0.98)

    name = "w2v_bert"

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {GROUP: new_model(self.config, rngs)}

    def loss(self, models, batch, rng):
        loss, metrics, count = models[GROUP](_audio(batch), rng, train=True)
        return loss, count, metrics

    def eval(self, models, batch):
        # A fixed key: the same masks every eval, so eval losses are comparable across steps.
        _, metrics, count = models[GROUP](_audio(batch), jax.random.key(0), train=False)
        return count, metrics

    def optimizers(self, groups, default) -> dict[str, Optimizer]:
        opt = self.optimizer(schedule=family_schedule(self.learning_rate, self.warmup_steps, self.total_steps))
        return {g: opt for g in groups}

    def tokens(self, batch: dict) -> int:  # audio samples: tokens_per_sec / sample_rate is the real-time factor
        return int(np.prod(np.shape(batch["audio"])))

    def flops(self, batch: dict) -> float:
        """~6 x params x frames (forward + backward of the dense layers), plus attention scores."""
        cfg = self.config
        b, n = np.shape(batch["audio"])
        t = cfg.num_frames(n)
        if not hasattr(self, "_params"):
            from musiclm_jax.semantic.w2v_bert import abstract_model
            self._params = num_params(abstract_model(cfg))
        layers = cfg.num_contrastive_layers + cfg.num_mlm_layers
        attn = 4 * b * t * t * cfg.embed_dim * layers  # QK^T and PV; full T x T even with a local window
        return float(6 * self._params * b * t + 3 * attn)

