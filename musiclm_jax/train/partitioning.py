"""Partitioning: meshes and t5x-style logical axis rules, in one place.

Parameters and activations carry *logical* axis names (``batch``, ``embed``, ``mlp`` ...). A rule table maps each
logical name to a mesh axis (``data``, ``fsdp``, ``model``) or to ``None`` (replicated). Models never name mesh axes.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Sequence

import gin
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# t5x-like standard table: activations' batch over (data, fsdp); weights' embed over fsdp; heads/mlp/vocab over model.
STANDARD_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("replica", "data", "fsdp")),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joined_kv", "model"),
    ("length", None),
    ("relpos_buckets", None),
    ("codebook", None),
    ("layers", None),
)

_ACTIVE: list[tuple[jax.sharding.Mesh | None, Rules]] = []


@contextlib.contextmanager
def axis_rules(mesh: jax.sharding.Mesh | None, rules: Rules = STANDARD_RULES):
    """Activates a mesh and a rule table for `with_logical_constraint` and `logical_to_spec`."""
    _ACTIVE.append((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.pop()


def current() -> tuple[jax.sharding.Mesh | None, Rules]:
    return _ACTIVE[-1] if _ACTIVE else (None, STANDARD_RULES)


def logical_to_spec(logical_axes: Sequence[str | None] | None, rules: Rules | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> P:
    """Maps logical axis names to a PartitionSpec; mesh axes absent from `mesh` (or used twice) are dropped."""
    if logical_axes is None:
        return P()
    if rules is None or mesh is None:
        active_mesh, active_rules = current()
        rules = active_rules if rules is None else rules
        mesh = active_mesh if mesh is None else mesh
    table = dict(rules)
    mesh_axes = set(mesh.axis_names) if mesh is not None else None
    used: set[str] = set()
    out = []
    for name in logical_axes:
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        kept = tuple(t for t in targets if (mesh_axes is None or t in mesh_axes) and t not in used)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return P(*out)


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `axis_rules(mesh, ...)` (e.g. on one device)."""
    mesh, rules = current()
    if mesh is None or mesh.size == 1:
        return x
    spec = logical_to_spec(logical_axes, rules, mesh)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


# ---------------------------------------------------------------------------------------------------------------
# Rule table (gin), meshes, shardings of parameter trees, global batches, multi-host start.
# ---------------------------------------------------------------------------------------------------------------

MESH_AXES = ("replica", "data", "fsdp", "model")


@gin.configurable
def logical_axis_rules(overrides: Rules = ()) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """The standard table with `overrides` applied (a name in overrides replaces its standard entry)."""
    table = dict(STANDARD_RULES)
    for name, target in overrides:
        table[name] = tuple(target) if isinstance(target, list) else target
    return tuple(table.items())


def _resolve_axis_sizes(sizes: dict[str, int], n_devices: int) -> dict[str, int]:
    """Fills at most one -1 axis with the devices left over; checks the product equals the device count."""
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"mesh axes {free} are all -1: set at most one mesh axis to -1 (it takes the devices left)")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh axis sizes {sizes} must be positive or -1")
    if free:
        if n_devices % fixed:
            raise ValueError(f"mesh axes {sizes} do not divide {n_devices} devices: "
                             "pick sizes whose product divides it")
        sizes = {**sizes, free[0]: n_devices // fixed}
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} slots but there are {n_devices} devices: "
                         "make the product of the axis sizes equal the device count (or use -1 for one axis)")
    return sizes


@gin.configurable
def make_mesh(data: int | None = None, fsdp: int = 1, model: int = 1, replica: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over (replica, data, fsdp, model) with Auto axis types; `replica` appears only when > 1.

    One axis may be -1: it takes all devices left; `data=None` means -1, or 1 when another axis is -1.
    Auto axis types matter: jax 0.12 defaults to Explicit, under which `with_sharding_constraint` by logical
    names stops being a hint.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data is None:
        data = 1 if -1 in (fsdp, model, replica) else -1
    sizes = _resolve_axis_sizes({"replica": replica, "data": data, "fsdp": fsdp, "model": model}, len(devices))
    names = tuple(name for name in MESH_AXES if name != "replica" or sizes["replica"] > 1)
    shape = tuple(sizes[name] for name in names)
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def logical_specs(state) -> dict:
    """Pure dict of logical PartitionSpecs (from `nnx.with_partitioning` metadata) for an nnx State or Module."""
    from flax import nnx

    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    return nnx.to_pure_dict(nnx.get_partition_spec(state))


def _is_spec(x) -> bool:
    return isinstance(x, P)


def shardings_from_logical(logical_tree, mesh: Mesh, rules: Rules) -> dict:
    """Maps a tree of logical PartitionSpecs (or None leaves: replicated) to NamedShardings on `mesh`."""
    def one(spec):
        return NamedSharding(mesh, logical_to_spec(tuple(spec) if spec is not None else None, rules, mesh))
    return jax.tree.map(one, logical_tree, is_leaf=lambda x: x is None or _is_spec(x))


def _axis_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[name] for name in names)


def check_divisible(abstract_tree, sharding_tree, what: str = "parameter") -> None:
    """Raises one ValueError naming the first array whose dimension the mesh does not divide (before compute)."""
    leaves = jax.tree.leaves_with_path(abstract_tree)
    shardings = jax.tree.leaves(sharding_tree, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(leaves, shardings):
        spec = tuple(sharding.spec) + (None,) * (len(leaf.shape) - len(sharding.spec))
        for dim, (size, entry) in enumerate(zip(leaf.shape, spec)):
            parts = _axis_size(sharding.mesh, entry)
            if size % parts:
                raise ValueError(
                    f"{what} {jax.tree_util.keystr(path)} has dim {dim} of size {size}, which mesh axes {entry} "
                    f"(size {parts}) do not divide: change the mesh shape (gin make_mesh.*) or the model size")


def opt_state_shardings(opt_state_abstract, params_abstract, param_shardings, mesh: Mesh, tx) -> dict:
    """Optimizer-state shardings: a leaf shaped like its parameter follows it; the rest (counts, Adafactor's
    factored rows and columns) is replicated."""
    import optax

    replicated = NamedSharding(mesh, P())

    def follow(leaf, param, sharding):
        return sharding if getattr(leaf, "shape", None) == param.shape else replicated

    try:
        # Puts each params-like subtree of the state next to the params and their shardings.
        return optax.tree_map_params(tx, follow, opt_state_abstract, params_abstract, param_shardings,
                                     transform_non_params=lambda _: replicated,
                                     is_leaf=lambda x: isinstance(x, NamedSharding))
    except Exception:  # a transform optax cannot map: replicate everything (correct, only less memory-efficient)
        return jax.tree.map(lambda _: replicated, opt_state_abstract)


def global_batch(host_batch: dict, mesh: Mesh, rules: Rules, logical_axes: dict | None = None) -> dict:
    """Host-local numpy batch -> global jax arrays sharded along `batch` (rows of all hosts concatenated)."""
    out = {}
    for key, value in host_batch.items():
        axes = (logical_axes or {}).get(key, ("batch",) + (None,) * (np.ndim(value) - 1))
        sharding = NamedSharding(mesh, logical_to_spec(axes, rules, mesh))
        out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value))
    return out


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
    """How many ways the `batch` logical axis is split on `mesh`: global batch sizes must be multiples of it."""
    return _axis_size(mesh, logical_to_spec(("batch",), rules, mesh)[0])


_DISTRIBUTED_STARTED = False


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when the environment says this is one process of many.

    Triggers: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES / JAX_PROCESS_ID), a multi-worker TPU pod
    (TPU_WORKER_HOSTNAMES lists several hosts), or MUSICLM_DISTRIBUTED=1 (let jax auto-detect: SLURM, GKE...).
    Must run before any other jax call. Returns whether it initialized.
    """
    global _DISTRIBUTED_STARTED
    env = os.environ
    multi_tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "")
    wanted = bool(env.get("JAX_COORDINATOR_ADDRESS")) or multi_tpu or env.get("MUSICLM_DISTRIBUTED") == "1"
    if not wanted or _DISTRIBUTED_STARTED:
        return False
    kwargs = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(env.get("JAX_NUM_PROCESSES", "1")),
                      process_id=int(env.get("JAX_PROCESS_ID", "0")))
    # CPU processes need a collectives backend for cross-host ops (the SIGTERM vote, global arrays); the flag
    # touches only the CPU client, so a TPU or GPU pod is unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    _DISTRIBUTED_STARTED = True
    return True


def accelerator_wheel() -> str | None:
    """The JAX extra this machine's accelerator needs ('tpu', 'cuda12'), or None for CPU: read from the hardware
    before JAX is imported (a notebook runtime installs it beside the CPU lock)."""
    import glob
    import shutil

    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME") or glob.glob("/dev/accel*") \
            or glob.glob("/dev/vfio/[0-9]*"):
        return "tpu"
    if shutil.which("nvidia-smi"):
        return "cuda12"
    return None


def describe_devices() -> str:
    """One line: the backend JAX runs on and its devices, e.g. 'TPU: 8 x TPU v2 (1 host)' or 'CPU: 1 x cpu'."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    line = f"{jax.default_backend().upper()}: {len(devices)} x {', '.join(kinds)} ({jax.process_count()} host"
    line += "s)" if jax.process_count() > 1 else ")"
    if jax.default_backend() == "cpu":
        line += "; no accelerator in this runtime"
    return line
