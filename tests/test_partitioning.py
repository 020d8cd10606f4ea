"""Meshes, rule tables, shardings of parameter trees, divisibility checks, host batches -> global arrays."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from musiclm_jax.train import partitioning as pt


def test_make_mesh_fills_one_axis_and_uses_auto_axis_types():
    mesh = pt.make_mesh(data=-1, model=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "model": 4}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert dict(pt.make_mesh(replica=2, fsdp=-1).shape) == {"replica": 2, "data": 1, "fsdp": 4, "model": 1}
    assert pt.make_mesh(devices=jax.devices()[:1]).size == 1
    with pytest.raises(ValueError, match="do not divide 8 devices"):
        pt.make_mesh(data=-1, model=3)
    with pytest.raises(ValueError, match="at most one mesh axis to -1"):
        pt.make_mesh(model=-1, fsdp=-1)
    with pytest.raises(ValueError, match="has 4 slots but there are 8 devices"):
        pt.make_mesh(data=2, model=2)


class _Toy(nnx.Module):
    def __init__(self, rngs):
        with nnx.use_eager_sharding(False):
            self.w = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, ("embed", "mlp"))(rngs.params(), (8, 12)))
            self.b = nnx.Param(jnp.zeros((12,)))


def test_logical_annotations_become_shardings_and_bad_meshes_are_named():
    mesh = pt.make_mesh(data=1, fsdp=2, model=4)
    abstract = nnx.eval_shape(lambda: _Toy(nnx.Rngs(0)))
    specs = pt.logical_specs(nnx.state(abstract, nnx.Param))
    assert specs == {"w": P("embed", "mlp"), "b": P()}
    shardings = pt.shardings_from_logical(specs, mesh, pt.STANDARD_RULES)
    assert shardings["w"].spec == P("fsdp", "model") and shardings["b"].spec == P()
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    pt.check_divisible(shapes, shardings)  # 8 % 2 and 12 % 4: fine
    bad = pt.shardings_from_logical(specs, pt.make_mesh(data=1, model=8), pt.STANDARD_RULES)
    with pytest.raises(ValueError, match=r"parameter \['w'\] has dim 1 of size 12, which mesh axes model \(size 8\)"):
        pt.check_divisible(shapes, bad)


def test_optimizer_state_follows_params_where_shapes_match():
    mesh = pt.make_mesh(data=1, fsdp=2, model=4)
    params = {"w": jax.ShapeDtypeStruct((256, 512), jnp.float32), "b": jax.ShapeDtypeStruct((512,), jnp.float32)}
    shardings = {"w": NamedSharding(mesh, P("fsdp", "model")), "b": NamedSharding(mesh, P())}
    tx = optax.adafactor(1e-3)
    opt = jax.eval_shape(tx.init, params)
    opt_sh = pt.opt_state_shardings(opt, params, shardings, mesh, tx)
    for leaf, sh in zip(jax.tree.leaves(opt), jax.tree.leaves(opt_sh, is_leaf=lambda x: isinstance(x, NamedSharding))):
        if leaf.shape == (256, 512):
            assert sh.spec == P("fsdp", "model")
        else:  # factored rows/cols and counters: replicated
            assert sh.spec == P()
    adam = optax.adamw(1e-3)
    adam_sh = pt.opt_state_shardings(jax.eval_shape(adam.init, params), params, shardings, mesh, adam)
    assert adam_sh[0].mu["w"].spec == P("fsdp", "model") and adam_sh[0].count.spec == P()


def test_host_batch_becomes_a_global_sharded_array():
    mesh = pt.make_mesh(data=2, model=4)
    host = {"targets": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
    out = pt.global_batch(host, mesh, pt.STANDARD_RULES, {"targets": ("batch", "length")})
    assert out["targets"].sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(out["targets"]), host["targets"])
    assert pt.batch_divisor(mesh, pt.STANDARD_RULES) == 2


def test_distributed_init_only_when_the_environment_asks(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MUSICLM_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    assert pt.maybe_initialize_distributed() is False
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "single-host")
    assert pt.maybe_initialize_distributed() is False
