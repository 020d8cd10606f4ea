"""The one trainer: same loss/grads on 1 vs 8 devices, gradient accumulation, NaN guard, several optimizers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from musiclm_jax.lm import transformer as tr
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.train import data, partitioning
from musiclm_jax.train.optimizers import Optimizer, make_optimizer, make_schedule
from musiclm_jax.train.trainer import Family, Trainer


def _adamw():
    return make_optimizer("adamw", schedule=make_schedule(1e-2, "constant", 0))


def _lm():
    return TokenLM(tr.preset("tiny", dtype="float32", num_heads=4))


def _batch(batch_size=8, length=16, seed=0):
    return next(data.synthetic_tokens(batch_size=batch_size, vocab_size=64, length=length, seed=seed))


@pytest.fixture(scope="module")
def single():
    trainer = Trainer(_lm(), partitioning.make_mesh(devices=jax.devices()[:1]), optimizer=_adamw, rng_impl="rbg")
    return trainer, trainer.init_state()


def _moved(state, trainer):
    return jax.device_put(jax.device_get(state), trainer.state_shardings)


@pytest.mark.parametrize("mesh_kwargs", [dict(data=2, model=4), dict(data=1, fsdp=8)], ids=["data2xmodel4", "fsdp8"])
def test_same_loss_and_grads_on_1_and_8_devices(single, mesh_kwargs):
    trainer1, state1 = single
    batch = _batch()
    grads1, metrics1 = trainer1.grads(state1, batch)

    trainer8 = Trainer(_lm(), partitioning.make_mesh(**mesh_kwargs), optimizer=_adamw, rng_impl="rbg")
    state8 = _moved(state1, trainer8)
    wi = state8["params"]["model"]["layers"][0]["mlp"]["wi"]
    assert len(wi.sharding.device_set) == 8 and not wi.sharding.is_fully_replicated
    grads8, metrics8 = trainer8.grads(state8, trainer8.device_batch(batch))
    np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics8["accuracy"], metrics1["accuracy"], rtol=1e-6)
    for g8, g1 in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_equals_the_big_batch(single):
    trainer1, state1 = single
    batch = _batch()
    # Uneven weights: the trainer must divide by the total weight, not average microbatch means.
    batch["weights"] = (np.arange(batch["targets"].size).reshape(batch["targets"].shape) % 3 != 0).astype(np.float32)
    batch["weights"][:2] = 0.0
    micro = Trainer(_lm(), trainer1.mesh, optimizer=_adamw, num_microbatches=4, rng_impl="rbg")
    g_big, m_big = trainer1.grads(state1, batch)
    g_acc, m_acc = micro.grads(state1, batch)
    np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_acc), jax.tree.leaves(g_big)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_nan_batch_is_skipped_and_counted(single):
    trainer, state = single
    state = _moved(state, trainer)
    before = jax.device_get(state)
    bad = _batch()
    bad["weights"] = np.full(bad["targets"].shape, np.nan, np.float32)
    state, metrics = trainer.train_step(state, bad)
    after = jax.device_get(state)
    assert int(after["skipped"]) == 1 and int(metrics["skipped_steps"]) == 1 and int(after["step"]) == 1
    for a, b in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(before["params"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after["opt"]), jax.tree.leaves(before["opt"])):
        np.testing.assert_array_equal(a, b)
    # A finite batch afterwards trains normally and the count stays.
    good = _batch()
    good["weights"] = np.ones(good["targets"].shape, np.float32)
    state, metrics = trainer.train_step(state, good)
    assert int(metrics["skipped_steps"]) == 1 and np.isfinite(float(metrics["loss"]))
    changed = jax.device_get(state["params"]["model"]["embed"])
    assert not np.array_equal(changed, before["params"]["model"]["embed"])


def test_training_reduces_the_loss(single):
    trainer, state = single
    state = _moved(state, trainer)
    ds = data.synthetic_tokens(batch_size=8, vocab_size=64, length=16, seed=3)
    losses = []
    for _ in range(40):
        state, metrics = trainer.train_step(state, next(ds))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses


def test_eval_over_a_finite_set_smaller_than_eval_steps(single):
    from musiclm_jax.train.trainer import _mean_eval

    trainer, state = single
    state = _moved(state, trainer)
    two = [_batch(seed=1), _batch(seed=2)]
    over_two = _mean_eval(trainer, state, iter(two), steps=5)   # stops at the end of the set
    assert over_two == pytest.approx(_mean_eval(trainer, state, iter(two), steps=2))
    with pytest.raises(ValueError, match="no batch"):
        _mean_eval(trainer, state, iter([]), steps=3)


# -- a toy family with two parameter groups and two optimizers (the codec's generator/discriminator shape) ---------


class _Regressor(nnx.Module):
    def __init__(self, rngs):
        init = nnx.with_partitioning(nnx.initializers.normal(0.5), ("embed", "mlp"))
        self.w = nnx.Param(init(rngs.params(), (4, 8)))


class TwoGroups(Family):
    """`a` fits y = x @ w_true; `b` gets a loss too but a zero learning rate: its params must not move."""

    name = "two_groups"

    def init(self, rngs):
        return {"a": _Regressor(rngs), "b": _Regressor(rngs)}

    def loss(self, models, batch, rng):
        pred = batch["x"] @ models["a"].w[...] + 0.1 * (batch["x"] @ models["b"].w[...])
        err = jnp.sum((pred - batch["y"]) ** 2)
        return err, batch["x"].shape[0], {"loss": err}

    def eval(self, models, batch):
        _, w, m = self.loss(models, batch, None)
        return w, m

    def optimizers(self, groups, default):
        return {"a": default(), "b": Optimizer(optax.sgd(0.0), lambda step: 0.0)}


def test_family_with_two_optimizers_on_a_sharded_mesh():
    trainer = Trainer(TwoGroups(), partitioning.make_mesh(data=2, model=4),
                      optimizer=lambda: make_optimizer("sgd", clip_norm=None,
                                                       schedule=make_schedule(0.05, "constant", 0)), rng_impl="rbg")
    assert trainer.groups == ["a", "b"]
    state = trainer.init_state()
    b0 = np.asarray(jax.device_get(state["params"]["b"]["w"]))
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(4, 8)).astype(np.float32)
    losses = []
    for _ in range(30):
        x = rng.normal(size=(8, 4)).astype(np.float32)
        state, m = trainer.train_step(state, {"x": x, "y": x @ w_true})
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.2 * losses[0]
    np.testing.assert_array_equal(np.asarray(jax.device_get(state["params"]["b"]["w"])), b0)
    weight, sums = trainer.eval_step(state, {"x": x, "y": x @ w_true})
    assert float(weight) == 8 and np.isfinite(float(sums["loss"]))


def test_batch_not_divisible_by_the_mesh_is_a_clear_error():
    trainer = Trainer(TwoGroups(), partitioning.make_mesh(data=8), rng_impl="rbg")
    with pytest.raises(ValueError, match="global batch size 6 is not a multiple of 8"):
        trainer.check_batch({"x": np.zeros((6, 4), np.float32)})
