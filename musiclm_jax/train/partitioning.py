"""Partitioning: meshes and t5x-style logical axis rules, in one place.

Parameters and activations carry *logical* axis names (``batch``, ``embed``, ``mlp`` ...). A rule table maps each
logical name to a mesh axis (``data``, ``fsdp``, ``model``) or to ``None`` (replicated). Models never name mesh axes.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import jax
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
