"""The one inference loader: a family's modules from a training or an exported checkpoint, without a Trainer.

    cfg = saved_config("weights/codec_vocos", CodecConfig)     # what the checkpoint records of itself
    loaded = load_for_inference(CodecFamily(config=cfg), "weights/codec_vocos")
    generator = loaded.models["generator"]

The family's `init` runs as shapes only (`nnx.eval_shape`: nothing allocated, no optimizer state built), the
checkpoint's `params` and `rest` (batch statistics, codebooks) are restored straight into their shardings (one
device by default, or the given mesh and rules), and the modules are merged with RNG streams rebuilt from the seed
(a jitted init whose parameters XLA drops, as the trainer does after a restore). Leaves an export dropped (a frozen
pretrained tower) come from `fill_dropped(params)`, which returns the full parameter tree.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import jax
from flax import nnx

from musiclm_jax.train import partitioning
from musiclm_jax.train.checkpoints import restore_for_inference


def saved_config(model_dir: str, cls, step: int | None = None, *, meta: dict | None = None):
    """The model config (`cls`, a dataclass) the latest (or `step`) checkpoint of `model_dir` records of itself
    (train/configs.py); `meta`: that checkpoint's metadata, when already read."""
    from musiclm_jax.train import configs
    from musiclm_jax.train.checkpoints import Checkpointer

    if meta is None:
        if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
            raise ValueError(f"{model_dir} holds no checkpoints/: pass the model_dir of a training or an export")
        ckpt = Checkpointer(model_dir, async_save=False)
        try:
            meta = ckpt.read_meta(step)
        finally:
            ckpt.close()
    record = meta.get("model_config")
    if not record:
        raise ValueError(f"the checkpoint in {model_dir} records no model config (written before checkpoints "
                         f"carried one): pass the {cls.__name__} explicitly or retrain it")
    return configs.from_dict(cls, record)


class Loaded(NamedTuple):
    models: dict          # {group: nnx.Module}
    params: dict          # {group: pure dict}, as restored (what fingerprints hash)
    meta: dict            # the checkpoint's metadata (gin config, dropped leaves, ...)
    step: int


def load_for_inference(family, model_dir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None,
                       rules: partitioning.Rules | None = None, seed: int = 0,
                       fill_dropped: Callable[[dict], dict] | None = None) -> Loaded:
    """Restores `family`'s modules from the latest (or `step`) checkpoint of `model_dir` (see module docstring)."""
    mesh = mesh if mesh is not None else partitioning.make_mesh(devices=jax.devices()[:1])
    rules = tuple(rules) if rules is not None else partitioning.logical_axis_rules()
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: family.init(nnx.Rngs(0)))
    if not isinstance(abstract, dict) or not abstract:
        raise ValueError(f"{type(family).__name__}.init must return a non-empty dict {{group: nnx.Module}}")
    graphdefs, target = {}, {"params": {}, "rest": {}}
    for group, module in abstract.items():
        graphdefs[group], params, _, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
        for kind, state in (("params", params), ("rest", rest)):
            shardings = partitioning.shardings_from_logical(partitioning.logical_specs(state), mesh, rules)
            target[kind][group] = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                               nnx.to_pure_dict(state), shardings)
    restored, meta, step = restore_for_inference(model_dir, target, step)
    params = restored["params"]
    if meta.get("dropped"):
        if fill_dropped is None:
            raise ValueError(f"{model_dir} was exported without {meta['dropped']}: this loader cannot rebuild them")
        params = fill_dropped(params)

    def rng_streams(key):
        with nnx.use_eager_sharding(False):
            models = family.init(nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1), default=key))
        return {g: nnx.to_pure_dict(nnx.state(m, nnx.RngState)) for g, m in models.items()}

    rngs = jax.jit(rng_streams)(jax.random.key(seed, impl="threefry2x32"))   # the trainer's streams
    models = {g: nnx.merge(graphdefs[g], params[g], rngs[g], restored["rest"][g]) for g in graphdefs}
    return Loaded(models, restored["params"], meta, step)
