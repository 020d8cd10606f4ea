"""Model configs as JSON: every checkpoint records its own architecture (meta "model_config", written by the
trainer from `Family.model_config()` and carried by exports and merges), so a loader rebuilds the model from the
checkpoint alone, with no side file and no reading of gin text.

    record = to_dict(cfg)                  # nested dataclasses -> plain JSON values
    cfg = from_dict(MuLanConfig, record)   # back, nested dataclasses and tuples included
"""
from __future__ import annotations

import dataclasses
import typing


def to_dict(cfg) -> dict:
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"a model config must be a dataclass, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def _value(hint, value):
    if value is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):   # JSON has no tuples
        args = typing.get_args(hint)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(_value(item, v) if item is not None else v for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):   # X | None
        for arg in typing.get_args(hint):
            if arg is not type(None) and (dataclasses.is_dataclass(arg) or typing.get_origin(arg) is tuple):
                return _value(arg, value)
    return value


def from_dict(cls, values: dict):
    """`cls` (a dataclass) from `to_dict`'s output; a field the class no longer has is an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"the saved {cls.__name__} has fields {unknown} that this version's {cls.__name__} lacks")
    return cls(**{k: _value(hints.get(k), v) for k, v in values.items()})
