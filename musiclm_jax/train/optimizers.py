"""Optimizers and learning-rate schedules (gin-configurable): Adafactor as in T5X, AdamW; warmup + decay.

`make_optimizer()` returns an `Optimizer(tx, schedule)`: the optax transform (clipping included) and the schedule,
so the trainer can log the learning rate it applies.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import gin
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine", "linear")
OPTIMIZERS = ("adafactor", "adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    tx: optax.GradientTransformation
    schedule: Callable


@gin.configurable
def make_schedule(learning_rate: float = 1e-2, schedule: str = "rsqrt", warmup_steps: int = 1000,
                  total_steps: int | None = None, final_fraction: float = 0.0) -> Callable:
    """Linear warmup from 0 to `learning_rate`, then `schedule`:

    constant; rsqrt (T5X: lr * sqrt(warmup / step)); cosine / linear decay to `final_fraction * lr` at
    `total_steps` (required for those two; a warmup as long as the run or longer is cut to half the run, with a
    warning, so a short `--steps` training works).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: use one of {SCHEDULES}")
    if learning_rate <= 0 or warmup_steps < 0:
        raise ValueError(f"learning_rate must be > 0 and warmup_steps >= 0 (got {learning_rate}, {warmup_steps})")
    if schedule in ("cosine", "linear"):
        if total_steps is None or total_steps < 1:
            raise ValueError(f"schedule {schedule!r} needs the training length (got total_steps={total_steps}): "
                             "pass --steps N (or bind TRAIN_STEPS / make_schedule.total_steps)")
        if total_steps <= warmup_steps:  # a short run (--steps 20 against a warmup of 50): fit the warmup into it
            fitted = total_steps // 2
            logging.getLogger(__name__).warning(
                "warmup of %d steps does not fit a %d-step run: warming up over %d steps instead",
                warmup_steps, total_steps, fitted)
            warmup_steps = fitted
    warm = max(warmup_steps, 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = learning_rate * jnp.minimum(1.0, (step + 1.0) / warm) if warmup_steps else learning_rate
        if schedule == "constant":
            return jnp.asarray(warmup, jnp.float32)
        if schedule == "rsqrt":
            return warmup * jnp.sqrt(warm / jnp.maximum(step + 1.0, warm))
        frac = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
        shape = 0.5 * (1 + jnp.cos(jnp.pi * frac)) if schedule == "cosine" else 1.0 - frac
        return warmup * (final_fraction + (1 - final_fraction) * shape)

    return fn


def family_schedule(learning_rate: float, warmup_steps: int, total_steps: int | None) -> Callable:
    """The model families' schedule: linear warmup, then cosine decay to 10 % at `total_steps`, or constant
    after the warmup when `total_steps` is None."""
    return make_schedule(learning_rate, "cosine" if total_steps else "constant", warmup_steps, total_steps,
                         final_fraction=0.1)


@gin.configurable
def make_optimizer(name: str = "adafactor", clip_norm: float | None = 1.0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8,
                   schedule: Callable | None = None) -> Optimizer:
    """`name`: adafactor (T5X defaults: factored second moments, decay 0.8, parameter-scale updates, update
    clipping 1.0, no momentum), adamw, or sgd. `clip_norm`: global-norm gradient clipping (None: off)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {OPTIMIZERS}")
    schedule = schedule or make_schedule()
    if name == "adafactor":
        opt = optax.adafactor(schedule, decay_rate=0.8, multiply_by_parameter_scale=True, clipping_threshold=1.0,
                              min_dim_size_to_factor=128, eps=1e-30, factored=True,
                              weight_decay_rate=weight_decay or None)
    elif name == "adamw":
        opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    else:
        opt = optax.sgd(schedule)
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt
    return Optimizer(tx=tx, schedule=schedule)
