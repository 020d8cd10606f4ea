"""A tiny stage LM trained for a few dozen steps on planted batches: what the conditioning tests (tempo, key,
melody) use to show that a stage learns to read its conditioning and that decoding follows it."""
import jax

from musiclm_jax.lm import transformer as tr
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.train import partitioning
from musiclm_jax.train.optimizers import make_optimizer, make_schedule
from musiclm_jax.train.trainer import Trainer


def train_tiny_stage(layout, batch, steps: int, lr: float):
    """`batch(seed)` -> (inputs, targets); returns (trainer, state) after `steps` steps at a constant `lr`."""
    cfg = tr.preset("tiny", vocab_size=layout.vocab_size, dtype="float32", max_len=64, aligned_inputs=True)
    trainer = Trainer(TokenLM(cfg, aligned=layout), partitioning.make_mesh(devices=jax.devices()[:1]),
                      rng_impl="rbg", optimizer=lambda: make_optimizer("adamw", schedule=make_schedule(lr, "constant", 0)))
    state = trainer.init_state()
    for i in range(steps):
        inputs, targets = batch(i)
        state, _ = trainer.train_step(state, trainer.device_batch({"inputs": inputs, "targets": targets}))
    return trainer, state


def heldout_accuracy(trainer, state, inputs, targets) -> float:
    """Token accuracy of the trained stage on one held-out batch."""
    weight, metrics = jax.device_get(trainer.eval_step(state, trainer.device_batch(
        {"inputs": inputs, "targets": targets})))
    return float(metrics["accuracy"] / weight)


def trained_model(trainer, state):
    """The trained Transformer of `train_tiny_stage`, for decoding."""
    trainer.ensure_rng_state()
    return trainer.merge(jax.device_get(state["params"]), jax.device_get(state["rest"]))["model"]
