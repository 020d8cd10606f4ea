"""The one trainer every model family uses (codec, MuLan, w2v-BERT, stage LMs).

A *family* (subclass of `Family`) says what the model is and what its loss is:

* `init(rngs) -> {group: nnx.Module}`: one entry per parameter group; each group gets its own optax optimizer
  (`optimizers()`), so a GAN family returns {"generator": ..., "discriminator": ...}.
* `loss(models, batch, rng) -> (loss_sum, weight, metric_sums)`: single-group families implement only this.
  The trainer divides summed gradients and metrics by the summed weight over microbatches, so gradient accumulation
  equals the big batch exactly (weight = token count for token losses; 1 for a per-batch mean loss).
* `grads(merge, params, rest, batch, rng) -> (grads, new_rest, weight, metric_sums)`: override it when groups need
  different losses (e.g. the discriminator loss on stop-gradient fakes); the default differentiates `loss`.
* `eval(models, batch) -> (weight, metric_sums)`, and optionally `flops(batch)` (model FLOPs of one training step,
  for MFU), `tokens(batch)`, `batch_axes(batch)`.

The trainer owns the rest: the train state pytree {step, params, opt, rest, skipped}, its shardings (logical
annotations -> mesh), jit with donation, microbatching with `lax.scan`, the NaN/Inf guard (a non-finite step
leaves params and optimizer state unchanged and is counted), and `train()`: metrics to TensorBoard (clu) and to
`metrics.jsonl`, a tqdm bar, periodic eval and checkpoints, resume, and SIGTERM (save, then return).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Iterator

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from musiclm_jax.train import configs, partitioning
from musiclm_jax.train.optimizers import Optimizer, make_optimizer

log = logging.getLogger(__name__)

# Peak dense bf16 FLOP/s per chip, for the MFU estimate when `peak_flops` is not given (CPU: none, measure it).
PEAK_FLOPS_BY_KIND = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
                      "TPU v6 lite": 918e12, "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
                      "NVIDIA A100": 312e12}


class Family:
    """Base class of a model family; see the module docstring for the contract."""

    name = "family"

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        raise NotImplementedError

    def loss(self, models: dict[str, nnx.Module], batch: dict, rng: jax.Array):
        raise NotImplementedError(f"{type(self).__name__} must implement loss() or grads()")

    def grads(self, merge: Callable, params: dict, rest: dict, batch: dict, rng: jax.Array):
        def fn(p):
            models = merge(p, rest)
            loss, weight, metrics = self.loss(models, batch, rng)
            return loss, (weight, metrics, split_rest(models))

        (_, (weight, metrics, new_rest)), grads = jax.value_and_grad(fn, has_aux=True)(params)
        return grads, new_rest, weight, metrics

    def eval(self, models: dict[str, nnx.Module], batch: dict):
        raise NotImplementedError(f"{type(self).__name__} has no eval()")

    def optimizers(self, groups: list[str], default: Callable[[], Optimizer]) -> dict[str, Optimizer]:
        return {g: default() for g in groups}

    def batch_axes(self, batch: dict) -> dict[str, tuple]:
        """Logical axes of each batch array; default: split the leading (batch) dimension only."""
        return {k: ("batch",) + (None,) * (np.ndim(v) - 1) for k, v in batch.items()}

    def tokens(self, batch: dict) -> int:
        return int(next(iter(batch.values())).shape[0])

    def flops(self, batch: dict) -> float | None:
        return None

    def model_config(self) -> dict | None:
        """The architecture as JSON, recorded in every checkpoint's meta ("model_config") for the loaders; default:
        the family's dataclass `config`, if it has one."""
        cfg = getattr(self, "config", None)
        return configs.to_dict(cfg) if dataclasses.is_dataclass(cfg) else None


def split_rest(models: dict[str, nnx.Module]) -> dict:
    """Non-parameter, non-RNG variables (e.g. batch statistics) of each group, as pure dicts."""
    return {g: nnx.to_pure_dict(nnx.state(m, nnx.Not(nnx.Any(nnx.Param, nnx.RngState)))) for g, m in models.items()}


def _batch_key(batch: dict) -> tuple:
    return tuple(sorted((k, tuple(np.shape(v)), str(np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype))
                        for k, v in batch.items()))


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _zeros_like_abstract(tree):
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)


class Trainer:
    """Sharded, jitted init / train step / eval step for one family on one mesh."""

    def __init__(self, family: Family, mesh: jax.sharding.Mesh | None = None, rules: partitioning.Rules | None = None,
                 optimizer: Callable[[], Optimizer] = make_optimizer, num_microbatches: int = 1, seed: int = 0,
                 rng_impl: str = "threefry2x32"):
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        self.family = family
        self.mesh = mesh if mesh is not None else partitioning.make_mesh()
        self.rules = tuple(rules) if rules is not None else partitioning.logical_axis_rules()
        self.num_microbatches = num_microbatches
        self.seed = seed
        # "rbg" compiles much faster on CPU than threefry (init of a model = one RNG call per parameter).
        self.rng_impl = rng_impl
        self.replicated = NamedSharding(self.mesh, P())

        # Structure only: graph definitions and logical specs, nothing allocated.
        with nnx.use_eager_sharding(False):
            abstract = nnx.eval_shape(lambda: family.init(nnx.Rngs(0)))
        if not isinstance(abstract, dict) or not abstract:
            raise ValueError(f"{type(family).__name__}.init must return a non-empty dict {{group: nnx.Module}}")
        self.groups = sorted(abstract)
        self.graphdefs, param_specs, rest_specs = {}, {}, {}
        for g in self.groups:
            gdef, p, _, r = nnx.split(abstract[g], nnx.Param, nnx.RngState, ...)
            self.graphdefs[g] = gdef
            param_specs[g] = partitioning.logical_specs(p)
            rest_specs[g] = partitioning.logical_specs(r)
        self.optimizers = family.optimizers(self.groups, optimizer)
        self.txs = {g: self.optimizers[g].tx for g in self.groups}

        self.abstract_state = jax.eval_shape(self._init_state, self._key())[0]
        params_sh = partitioning.shardings_from_logical(param_specs, self.mesh, self.rules)
        partitioning.check_divisible(self.abstract_state["params"], params_sh)
        opt_sh = {g: partitioning.opt_state_shardings(self.abstract_state["opt"][g], self.abstract_state["params"][g],
                                                      params_sh[g], self.mesh, self.txs[g]) for g in self.groups}
        self.state_shardings = {
            "step": self.replicated, "skipped": self.replicated, "params": params_sh, "opt": opt_sh,
            "rest": partitioning.shardings_from_logical(rest_specs, self.mesh, self.rules)}
        partitioning.check_divisible(self.abstract_state, self.state_shardings, what="train-state array")
        self._rng_state = None
        self._step_fns: dict[Any, Callable] = {}
        self._eval_fns: dict[Any, Callable] = {}

    # -- state -------------------------------------------------------------------------------------------------
    def _key(self) -> jax.Array:
        return jax.random.key(self.seed, impl=self.rng_impl)

    def _init_state(self, key):
        with nnx.use_eager_sharding(False):
            models = self.family.init(nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1), default=key))
        params = {g: nnx.to_pure_dict(nnx.state(m, nnx.Param)) for g, m in models.items()}
        rng_state = {g: nnx.to_pure_dict(nnx.state(m, nnx.RngState)) for g, m in models.items()}
        opt = {g: self.txs[g].init(params[g]) for g in self.groups}
        state = {"step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32), "params": params,
                 "opt": opt, "rest": split_rest(models)}
        return state, rng_state

    def init_state(self) -> dict:
        """Initializes the train state directly into its shardings (no host copy of the full model)."""
        rng_sh = jax.tree.map(lambda _: self.replicated, jax.eval_shape(self._init_state, self._key())[1])
        fn = jax.jit(self._init_state, out_shardings=(self.state_shardings, rng_sh))
        with self.activate():
            state, self._rng_state = fn(self._key())
        return state

    def abstract_target(self) -> dict:
        """ShapeDtypeStructs with this trainer's shardings: the restore target of a checkpoint."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def warm_start(self, state: dict, model_dir: str, grow: bool = False) -> dict:
        """`state` with its params and rest taken from the latest checkpoint of `model_dir` (a training or an exported
        one, same architecture): fine-tuning starts there, with this run's fresh optimizer state and step 0.
        `grow`: a leaf may also be larger than the saved one along some axes (a vocabulary grown by new token
        streams, e.g. melody tokens added to a trained stage LM): it gets the saved values in its leading slice and
        keeps this run's fresh initialisation in the rest."""
        from musiclm_jax.train.checkpoints import restore_for_inference

        if grow:
            return {**state, **self._grown(state, model_dir)}
        abstract = self.abstract_target()
        try:
            restored, meta, step = restore_for_inference(model_dir, abstract)
        except (ValueError, KeyError) as e:
            raise ValueError(f"cannot warm-start from {model_dir}: {e} (it must hold a checkpoint of the same "
                             "family and architecture)") from e
        if meta.get("dropped"):
            raise ValueError(f"cannot warm-start from {model_dir}: it was exported without {meta['dropped']}")
        log.info("warm start: params of %s (step %d)", model_dir, step)
        return {**state, "params": restored["params"], "rest": restored["rest"]}

    def _grown(self, state: dict, model_dir: str) -> dict:
        from musiclm_jax.train.checkpoints import int_keys, read_inference_state

        step, meta, saved = read_inference_state(model_dir)
        if meta.get("dropped"):
            raise ValueError(f"cannot warm-start from {model_dir}: it was exported without {meta['dropped']}")
        saved = {jax.tree_util.keystr(p): v for p, v in jax.tree.leaves_with_path(int_keys(saved, meta["shapes"]))}
        grown = []

        def take(path, fresh):
            key = jax.tree_util.keystr(path)
            if key not in saved:
                raise ValueError(f"cannot warm-start from {model_dir}: it has no {key} (another family?)")
            old = np.asarray(saved[key])
            if old.shape != fresh.shape:
                if old.ndim != fresh.ndim or any(a > b for a, b in zip(old.shape, fresh.shape)):
                    raise ValueError(f"cannot warm-start from {model_dir}: {key} is {list(old.shape)} there and "
                                     f"{list(fresh.shape)} here (only growing axes can be filled)")
                new = np.array(jax.device_get(fresh))
                new[tuple(slice(0, n) for n in old.shape)] = old
                old = new
                grown.append(f"{key} {list(saved[key].shape)} -> {list(fresh.shape)}")
            return jax.device_put(old.astype(fresh.dtype), fresh.sharding)

        out = jax.tree_util.tree_map_with_path(take, {"params": state["params"], "rest": state["rest"]})
        log.info("warm start: params of %s (step %d); grown: %s", model_dir, step, "; ".join(grown) or "none")
        return out

    def ensure_rng_state(self) -> None:
        """RNG streams stored in modules are not trained state; after a restore they are rebuilt from the seed."""
        if self._rng_state is None:
            self._rng_state = jax.jit(lambda k: self._init_state(k)[1])(self._key())

    def merge(self, params: dict, rest: dict) -> dict[str, nnx.Module]:
        return {g: nnx.merge(self.graphdefs[g], params[g], self._rng_state[g], rest[g]) for g in self.groups}

    def activate(self):
        return partitioning.axis_rules(self.mesh, self.rules)

    # -- batches -----------------------------------------------------------------------------------------------
    def batch_shardings(self, batch: dict) -> dict:
        axes = self.family.batch_axes(batch)
        return {k: NamedSharding(self.mesh, partitioning.logical_to_spec(axes[k], self.rules, self.mesh))
                for k in batch}

    def check_batch(self, batch: dict, num_microbatches: int | None = None) -> None:
        rows = {int(np.shape(v)[0]) for v in batch.values()}
        n = self.num_microbatches if num_microbatches is None else num_microbatches
        divisor = partitioning.batch_divisor(self.mesh, self.rules) * n
        for rows_n in rows:
            if rows_n % divisor:
                raise ValueError(f"global batch size {rows_n} is not a multiple of {divisor} (batch shards x "
                                 f"num_microbatches={n}): change the batch size or the mesh")

    def device_batch(self, host_batch: dict) -> dict:
        """Host-local numpy batch -> global sharded arrays (each host passes its own rows)."""
        axes = self.family.batch_axes(host_batch)
        return partitioning.global_batch(host_batch, self.mesh, self.rules, axes)

    # -- the step ----------------------------------------------------------------------------------------------
    def _microbatched_grads(self, params, rest, batch, rng):
        n = self.num_microbatches
        if n == 1:
            return self.family.grads(self.merge, params, rest, batch, rng)
        axes = self.family.batch_axes(batch)

        def split(x, ax):
            # [B, ...] -> [n, B/n, ...] keeping each device's rows on that device (microbatch i = rows i::n).
            x = jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)
            return partitioning.with_logical_constraint(x, (None,) + tuple(ax))

        micro = {k: split(v, axes[k]) for k, v in batch.items()}
        first = jax.tree.map(lambda v: v[0], micro)
        shapes = jax.eval_shape(lambda: self.family.grads(self.merge, params, rest, first, rng))
        init = (_zeros_like_abstract(shapes[0]), rest, _zeros_like_abstract(shapes[2]),
                _zeros_like_abstract(shapes[3]))

        def body(carry, xs):
            g_acc, rest_c, w_acc, m_acc = carry
            mb, i = xs
            g, rest_c, w, m = self.family.grads(self.merge, params, rest_c, mb, jax.random.fold_in(rng, i))
            return (_tree_add(g_acc, g), rest_c, w_acc + w, _tree_add(m_acc, m)), None

        carry, _ = jax.lax.scan(body, init, (micro, jnp.arange(n)))
        return carry

    def _grads_and_metrics(self, state, batch):
        rng = jax.random.fold_in(self._key(), state["step"])
        grads, rest, weight, metrics = self._microbatched_grads(state["params"], state["rest"], batch, rng)
        weight = jnp.asarray(weight, jnp.float32)
        denom = jnp.where(weight > 0, weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
        metrics = {k: jnp.asarray(v, jnp.float32) / denom for k, v in metrics.items()}
        return grads, rest, weight, metrics

    def _train_step(self, state, batch):
        grads, rest, weight, metrics = self._grads_and_metrics(state, batch)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)
        for v in metrics.values():
            finite &= jnp.all(jnp.isfinite(v))
        new_params, new_opt = {}, {}
        for g in self.groups:
            updates, new_opt[g] = self.txs[g].update(grads[g], state["opt"][g], state["params"][g])
            new_params[g] = optax.apply_updates(state["params"][g], updates)

        def keep(new, old):  # the NaN/Inf guard: a non-finite step changes nothing but the counters
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        skipped = state["skipped"] + (~finite).astype(jnp.int32)
        new_state = {"step": state["step"] + 1, "skipped": skipped, "params": keep(new_params, state["params"]),
                     "opt": keep(new_opt, state["opt"]), "rest": keep(rest, state["rest"])}
        metrics = dict(metrics, grad_norm=grad_norm, weight=weight, skipped_steps=skipped,
                       learning_rate=self.optimizers[self.groups[0]].schedule(state["step"]))
        return new_state, metrics

    def train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """One optimizer step on a global batch (dict of arrays or numpy; numpy is placed by batch shardings)."""
        key = _batch_key(batch)
        if key not in self._step_fns:
            self.check_batch(batch)
            self._step_fns[key] = jax.jit(self._train_step, donate_argnums=(0,),
                                          in_shardings=(self.state_shardings, self.batch_shardings(batch)),
                                          out_shardings=(self.state_shardings, self.replicated))
        self.ensure_rng_state()
        with self.activate():
            return self._step_fns[key](state, batch)

    def grads(self, state: dict, batch: dict) -> tuple[dict, dict]:
        """Gradients and metrics of `batch` without updating (tests, debugging)."""
        key = ("grads",) + _batch_key(batch)
        if key not in self._step_fns:
            self.check_batch(batch)
            self._step_fns[key] = jax.jit(lambda s, b: (lambda g, _, __, m: (g, m))(*self._grads_and_metrics(s, b)),
                                          in_shardings=(self.state_shardings, self.batch_shardings(batch)))
        self.ensure_rng_state()
        with self.activate():
            return self._step_fns[key](state, batch)

    def eval_step(self, state: dict, batch: dict) -> tuple[jax.Array, dict]:
        """(weight, metric sums) of one eval batch."""
        key = _batch_key(batch)
        if key not in self._eval_fns:
            self.check_batch(batch, num_microbatches=1)

            def fn(state, batch):
                return self.family.eval(self.merge(state["params"], state["rest"]), batch)

            self._eval_fns[key] = jax.jit(fn, in_shardings=(self.state_shardings, self.batch_shardings(batch)),
                                          out_shardings=self.replicated)
        self.ensure_rng_state()
        with self.activate():
            return self._eval_fns[key](state, batch)

    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_state["params"]))


# ------------------------------------------------------------------------------------------------------------------
# The training loop.


class _Preemption:
    """SIGTERM sets a flag; the loop saves at the next step boundary and returns."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler (the caller handles preemption)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def any_host(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def default_peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS_BY_KIND.items():
        if kind.startswith(name):
            return peak * jax.device_count()
    return None


class _NullWriter:
    def write_scalars(self, step, scalars):
        pass

    def flush(self):
        pass


def _metric_writer(logdir: str, tensorboard: bool):
    if not tensorboard:  # clu's writers import TensorFlow (seconds): skip it when only metrics.jsonl is wanted
        return _NullWriter()
    from clu import metric_writers
    return metric_writers.create_default_writer(logdir, just_logging=jax.process_index() > 0)


def _mean_eval(trainer: Trainer, state, data: Iterator[dict], steps: int) -> dict:
    """Weighted mean of the eval metrics over `steps` batches, or over all of a smaller (finite) eval set."""
    total_w, sums = 0.0, {}
    for i in range(steps):
        try:
            raw = next(data)
        except StopIteration:
            if i == 0:
                raise ValueError("the eval dataset gave no batch: it is smaller than one batch (use a smaller "
                                 "batch size or another split)") from None
            log.info("eval set exhausted after %d of %d eval steps", i, steps)
            break
        batch = trainer.device_batch(raw)
        weight, metrics = jax.device_get(trainer.eval_step(state, batch))
        total_w += float(weight)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return {f"eval/{k}": v / max(total_w, 1e-9) for k, v in sums.items()}


@gin.configurable
def train(family: Family = gin.REQUIRED, *, model_dir: str = gin.REQUIRED, dataset: Callable = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, num_steps: int = gin.REQUIRED, eval_dataset: Callable | None = None,
          eval_period: int = 0, eval_steps: int = 1, checkpoint_period: int = 1000, keep_checkpoints: int = 3,
          async_checkpoints: bool = True, log_period: int = 10, num_microbatches: int = 1, seed: int = 0,
          mesh_fn: Callable = partitioning.make_mesh, rules_fn: Callable = partitioning.logical_axis_rules,
          optimizer: Callable[[], Optimizer] = make_optimizer, peak_flops: float | None = None,
          progress: bool = True, tensorboard: bool = True, max_steps_this_run: int | None = None,
          rng_impl: str = "threefry2x32", init_from: str | None = None, init_grow: bool = False) -> dict:
    """Trains `family` to `num_steps` (resuming from `model_dir` when it holds a checkpoint) -> summary dict.

    `dataset(split=, batch_size=, seed=, shard_index=, num_shards=)` returns this host's iterator with
    `get_state()` / `set_state()`; `batch_size` is global. `max_steps_this_run` stops early (tests, time slices).
    Metrics go to `<model_dir>/metrics.jsonl` always and to TensorBoard (`<model_dir>/tb`, via clu) if `tensorboard`.
    `init_from`: a checkpoint dir (training or exported) whose params start a run that has none of its own yet
    (T5X's initial checkpoint; a resumed run ignores it). `init_grow`: leaves larger than the saved ones (a grown
    vocabulary) are filled where they overlap (`Trainer.warm_start(grow=True)`).
    """
    from tqdm import tqdm

    from musiclm_jax.train.checkpoints import Checkpointer, is_remote

    trainer = Trainer(family, mesh_fn(), rules_fn(), optimizer, num_microbatches, seed, rng_impl)
    if batch_size % jax.process_count():
        raise ValueError(f"batch_size {batch_size} must be a multiple of the host count {jax.process_count()}")
    data_kwargs = dict(batch_size=batch_size // jax.process_count(), seed=seed, shard_index=jax.process_index(),
                       num_shards=jax.process_count())
    data = dataset(split="train", **data_kwargs)
    ckpt = Checkpointer(model_dir, keep=keep_checkpoints, async_save=async_checkpoints)
    if ckpt.latest_step() is not None:
        state, data_state, step = ckpt.restore(trainer.abstract_target(), family=family.name)
        data.set_state(data_state)
        log.info("resumed from %s at step %d", model_dir, step)
    else:
        state = trainer.init_state()
        if init_from:
            state = trainer.warm_start(state, init_from, grow=init_grow)
    step = int(jax.device_get(state["step"]))
    log.info("%s: %d parameters, mesh %s", family.name, trainer.num_params(), dict(trainer.mesh.shape))
    model_config = family.model_config()

    peak = peak_flops if peak_flops is not None else default_peak_flops()
    writer = _metric_writer(os.path.join(model_dir, "tb"), tensorboard)
    # metrics.jsonl on a local model dir (a bucket cannot append: there, TensorBoard under tb/ has the metrics).
    jsonl = (open(os.path.join(model_dir, "metrics.jsonl"), "a")
             if jax.process_index() == 0 and not is_remote(model_dir) else None)
    last_steps = num_steps if max_steps_this_run is None else min(num_steps, step + max_steps_this_run)
    bar = tqdm(total=num_steps, initial=step, disable=not progress or jax.process_index() > 0, desc=family.name)
    summary: dict[str, Any] = {"start_step": step, "preempted": False}
    window = {"t0": None, "steps": 0, "tokens": 0, "flops": 0.0}
    with _Preemption() as preempt:
        while step < last_steps:
            host_batch = next(data)
            state, metrics = trainer.train_step(state, trainer.device_batch(host_batch))
            step += 1
            if window["t0"] is None:  # the first step compiles: start the clock after it
                jax.block_until_ready(metrics)
                window = {"t0": time.perf_counter(), "steps": 0, "tokens": 0, "flops": 0.0}
            else:
                window["steps"] += 1
                window["tokens"] += family.tokens(host_batch) * jax.process_count()
                window["flops"] += family.flops(host_batch) or 0.0
            bar.update(1)
            stop = preempt.any_host()
            if step % log_period == 0 or step == last_steps or stop:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if window["steps"]:
                    elapsed = time.perf_counter() - window["t0"]
                    scalars["tokens_per_sec"] = window["tokens"] / elapsed
                    scalars["steps_per_sec"] = window["steps"] / elapsed
                    if window["flops"]:
                        scalars["model_flops_per_sec"] = window["flops"] * jax.process_count() / elapsed
                        if peak:
                            scalars["mfu"] = scalars["model_flops_per_sec"] / peak
                    window = {"t0": time.perf_counter(), "steps": 0, "tokens": 0, "flops": 0.0}
                writer.write_scalars(step, scalars)
                if jsonl:
                    jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
                    jsonl.flush()
                bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}")
                summary["last_metrics"] = scalars
            if eval_dataset is not None and eval_period and step % eval_period == 0:
                eval_data = eval_dataset(split="eval", **data_kwargs)
                scalars = _mean_eval(trainer, state, eval_data, eval_steps)
                writer.write_scalars(step, scalars)
                if jsonl:
                    jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
                summary["last_eval"] = scalars
            if stop:
                ckpt.save(step, state, data.get_state(), family=family.name, model_config=model_config, force=True)
                ckpt.wait()
                log.warning("SIGTERM: saved step %d to %s, exiting", step, model_dir)
                summary["preempted"] = True
                break
            if step % checkpoint_period == 0 or step == num_steps:
                ckpt.save(step, state, data.get_state(), family=family.name, model_config=model_config,
                          force=step == num_steps)
    bar.close()
    ckpt.close()
    writer.flush()
    if jsonl:
        jsonl.close()
    summary.update(step=step, num_steps=num_steps, skipped_steps=int(jax.device_get(state["skipped"])), num_params=trainer.num_params())
    summary["state"] = state
    return summary
