"""Orbax checkpoints: async save, keep-N, the data iterator's position and the gin config saved with the model.

A checkpoint step holds two items: `state` (the train state pytree: step, params, optimizer state ...) and `meta`
(JSON: the data iterator state, the family name, every array's shape and dtype, the gin config text and the model
config that the loaders rebuild the model from, train/configs.py). The
model directory also gets `config.gin` (and `operative_config.gin`): a checkpoint directory says how it was trained.

Restoring takes an abstract target (ShapeDtypeStruct leaves with shardings): orbax reads each array straight into
that sharding, which is how a checkpoint moves to another mesh. Shapes are compared first, from the JSON alone,
so a checkpoint of another config fails with one clear error before any array is read.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Sequence

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath


def is_remote(path: str) -> bool:
    """A bucket path (gs://, s3://): what a pod's hosts share; written through epath / orbax, never `open`."""
    return "://" in str(path)


def tree_signature(tree) -> dict[str, list]:
    """{path: [shape, dtype]} for every array leaf (works on arrays and ShapeDtypeStructs)."""
    return {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)]
            for path, leaf in jax.tree.leaves_with_path(tree)}


def compare_signatures(saved: dict, expected: dict, where: str) -> None:
    """Raises one ValueError naming the first difference between two tree signatures."""
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint {where} was written by another config: it lacks {missing[:3]} and has "
                         f"{extra[:3]} the current model does not; point model_dir elsewhere or use the gin "
                         "config stored beside it (config.gin)")
    # Parameters first: they name the problem better than their optimizer-state twins.
    for key, (shape, dtype) in sorted(expected.items(), key=lambda kv: not kv[0].startswith("['params']")):
        if saved[key] != [shape, dtype]:
            raise ValueError(f"checkpoint {where} was written by another config: {key} is {saved[key]} there but "
                             f"{[shape, dtype]} here; point model_dir elsewhere or use its config.gin")


@gin.configurable
class Checkpointer:
    """Thin layer over `ocp.CheckpointManager` (directory `<model_dir>/checkpoints`)."""

    def __init__(self, model_dir: str, keep: int = 3, async_save: bool = True):
        if not model_dir:
            raise ValueError("model_dir is empty: set it (gin MODEL_DIR or --gin.MODEL_DIR='\"/path\"')")
        self.model_dir = model_dir if is_remote(model_dir) else os.path.abspath(model_dir)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(os.path.join(self.model_dir, "checkpoints"), options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict | None, *, family: str = "", model_config: dict | None = None,
             force: bool = False) -> bool:
        """Starts an (async) save of `state`; returns whether a save was started. `model_config`: the family's
        architecture (`Family.model_config()`), what the loaders rebuild the model from."""
        meta = {"step": int(step), "family": family, "data_state": data_state, "shapes": tree_signature(state),
                "gin_config": gin.config_str(), "model_config": model_config}
        if jax.process_count() > 1:  # only the primary host writes meta: it records every host's data position
            meta["data_states"] = _gather_json(data_state)
        saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                meta=ocp.args.JsonSave(meta)), force=force)
        if saved and jax.process_index() == 0:
            # config.gin: every binding (re-runnable); operative_config.gin: the ones the run actually used.
            texts = {"config.gin": meta["gin_config"], "operative_config.gin": gin.operative_config_str()}
            for name, text in texts.items():
                epath.Path(self.model_dir, name).write_text(text)
        return saved

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {self.model_dir}/checkpoints")
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, abstract_state, step: int | None = None, *, family: str = "") -> tuple[Any, dict | None, int]:
        """Restores into `abstract_state`'s shapes and shardings -> (state, data_state, step)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {self.model_dir}/checkpoints")
        meta = self.read_meta(step)
        where = f"{self.model_dir} (step {step})"
        if family and meta.get("family") and meta["family"] != family:
            raise ValueError(f"checkpoint {where} belongs to model family {meta['family']!r}, not {family!r}")
        compare_signatures(meta["shapes"], tree_signature(abstract_state), where)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"], host_data_state(meta, where), step

    def restore_subtrees(self, abstract: dict, step: int | None = None) -> tuple[dict, int]:
        """Restores only the top-level entries of `abstract` (e.g. {"params": ..., "rest": ...}) for inference,
        whatever optimizer the checkpoint was trained with."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {self.model_dir}/checkpoints: train first or fix model_dir")
        meta = self.read_meta(step)
        expected = tree_signature(abstract)
        saved = {k: v for k, v in meta["shapes"].items() if any(k.startswith(f"['{top}']") for top in abstract)}
        compare_signatures(saved, expected, f"{self.model_dir} (step {step})")
        args = ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                      partial_restore=True)
        return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _gather_json(value) -> list:
    """Every host's `value` (JSON-serialisable), in process order; all hosts must call it."""
    import json

    import numpy as np
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size]))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:raw.size] = raw
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(rows, np.ravel(lengths))]


def host_data_state(meta: dict, where: str) -> dict | None:
    """This host's data iterator state from a checkpoint's meta (a single-host checkpoint has one for all)."""
    states = meta.get("data_states")
    if states is None:
        return meta.get("data_state")
    if len(states) != jax.process_count():
        raise ValueError(f"checkpoint {where} was written by {len(states)} hosts, this run has "
                         f"{jax.process_count()}: resume on as many hosts (or restore params only with init_from)")
    return states[jax.process_index()]


def _prune(tree: dict, drop: Sequence[str]) -> dict:
    """`tree` (nested dicts) without the entries whose keystr path starts with one of `drop`."""
    def walk(node, path):
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            p = f"{path}[{k!r}]"
            if any(p.startswith(d) for d in drop):
                continue
            out[k] = walk(v, p)
        return out
    return walk(tree, "")


def int_keys(tree: dict, saved_shapes: dict) -> dict:
    """A tree restored without a target has its integer keys (layer lists) as strings: give them back their type,
    as the saved signature spells them."""
    def walk(node, path):
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            if isinstance(k, str) and k.isdigit() and any(s.startswith(f"{path}[{int(k)}]") for s in saved_shapes):
                k = int(k)
            out[k] = walk(v, f"{path}[{k!r}]")
        return out
    return walk(tree, "")


def overlay(base: dict, update: dict) -> dict:
    """`base` with every leaf that `update` has replaced by update's (nested dicts)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = overlay(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def restore_for_inference(model_dir: str, abstract: dict, step: int | None = None) -> tuple[dict, dict, int]:
    """{"params", "rest"} of a training or an exported checkpoint -> (restored, meta, step). Leaves that an export
    dropped (meta "dropped": keystr prefixes, e.g. a frozen pretrained tower) are absent from `restored`: the
    caller rebuilds them (see `overlay`)."""
    ckpt = Checkpointer(model_dir, async_save=False)
    try:
        meta = ckpt.read_meta(step)
        target = _prune({"params": abstract["params"], "rest": abstract["rest"]}, meta.get("dropped", ()))
        restored, step = ckpt.restore_subtrees(target, step)
    finally:
        ckpt.close()
    return restored, meta, step


def read_inference_state(model_dir: str) -> tuple[int, dict, dict]:
    """The latest checkpoint of a training or exported directory, as saved (no model code): (step, meta,
    {"params", "rest"})."""
    ckpt = Checkpointer(model_dir, async_save=False)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise ValueError(f"no checkpoint in {model_dir}/checkpoints: train it first")
        meta = ckpt.read_meta(step)
        state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        ckpt.close()
    return int(step), meta, {"params": state["params"], "rest": state["rest"]}


def _write_inference(dst_dir: str, step: int, kept: dict, meta: dict, extra_meta: dict) -> None:
    if os.path.exists(dst_dir):
        shutil.rmtree(dst_dir)
    dst = Checkpointer(dst_dir, keep=1, async_save=False)
    new_meta = {"step": int(step), "family": meta.get("family", ""), "data_state": None,
                "shapes": tree_signature(kept), "gin_config": meta.get("gin_config", ""),
                "model_config": meta.get("model_config"), "dropped": [],
                **extra_meta}
    dst.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(kept), meta=ocp.args.JsonSave(new_meta)),
                     force=True)
    dst.close()


def merge_inference(a_dir: str, b_dir: str, lam: float, dst_dir: str) -> dict:
    """Weight interpolation of two checkpoints of one architecture: every floating leaf (1 - lam) * a + lam * b
    (computed in float32, saved in its dtype; lam 0 and 1 give a and b bit for bit); other leaves must be equal.
    Written to `dst_dir` as an inference checkpoint with a's configs. Returns {"step", "leaves", "lam"}."""
    import numpy as np

    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"--lam must be in [0, 1] (0 gives the first model, 1 the second), got {lam}")
    step, meta_a, a = read_inference_state(a_dir)
    _, meta_b, b = read_inference_state(b_dir)
    a, b = int_keys(a, meta_a["shapes"]), int_keys(b, meta_b["shapes"])
    sig_a, sig_b = tree_signature(a), tree_signature(b)
    if sig_a != sig_b:
        diff = sorted(set(sig_a) ^ set(sig_b)) or [k for k in sig_a if sig_a[k] != sig_b[k]]
        raise ValueError(f"{a_dir} and {b_dir} are not two versions of one model ({diff[0]} differs): merge only "
                         "finetunings of the same base")
    paths_a, tree = jax.tree_util.tree_flatten_with_path(a)
    leaves_b = jax.tree.leaves(b)
    merged = []
    for (path, x), y in zip(paths_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16":
            if lam in (0.0, 1.0):  # the endpoints exactly (-0.0 + 0.0 would not give -0.0 back)
                merged.append(x if lam == 0.0 else y)
            else:
                merged.append(((1.0 - lam) * x.astype(np.float32) + lam * y.astype(np.float32)).astype(x.dtype))
        elif np.array_equal(x, y):
            merged.append(x)
        else:
            raise ValueError(f"{jax.tree_util.keystr(path)} (a {x.dtype} leaf) differs between {a_dir} and {b_dir}: "
                             "merge only finetunings of the same base")
    _write_inference(dst_dir, step, jax.tree_util.tree_unflatten(tree, merged), meta_a,
                     {"merged_from": [a_dir, b_dir], "lam": lam, "dropped": meta_a.get("dropped", [])})
    for name in ("config.gin", "operative_config.gin"):
        if os.path.exists(os.path.join(a_dir, name)):
            shutil.copy2(os.path.join(a_dir, name), os.path.join(dst_dir, name))
    return {"step": step, "leaves": len(merged), "lam": lam}


def export_inference(src_dir: str, dst_dir: str, *, drop: Sequence[str] = (), extra_files: Sequence[str] | None = None,
                     note: dict | None = None) -> dict:
    """Writes the latest checkpoint of `src_dir` to `dst_dir` for inference: `params` and `rest` only (no optimizer
    state, no step counters), minus the leaves under the keystr prefixes `drop` (recorded in meta["dropped"], e.g.
    "['params']['mulan']['text']" for a frozen pretrained text tower the loader reads from its package), plus
    config.gin / operative_config.gin and `extra_files` (files or folders of src_dir; default: all but the
    checkpoints, e.g. a k-means, a quantizer, metrics). Needs no
    model code: arrays are read as saved. Returns {"step", "bytes", "dropped"}."""
    step, meta, kept = read_inference_state(src_dir)
    kept = int_keys(_prune(kept, drop), meta["shapes"])
    if extra_files is None:  # everything beside the checkpoints and TensorBoard's events (tb/, metrics.jsonl
        # holds the same): configs, k-means, quantizer, metrics
        extra_files = [n for n in sorted(os.listdir(src_dir)) if n not in ("checkpoints", "tb")]
    _write_inference(dst_dir, step, kept, meta, {"dropped": list(drop), "exported_from": src_dir, **(note or {})})
    for name in ("config.gin", "operative_config.gin", *extra_files):
        if os.path.exists(os.path.join(dst_dir, name)):
            continue
        path = os.path.join(src_dir, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dst_dir, name))
        elif os.path.exists(path):
            shutil.copy2(path, os.path.join(dst_dir, name))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst_dir) for f in fs)
    return {"step": int(step), "bytes": size, "dropped": list(drop)}
