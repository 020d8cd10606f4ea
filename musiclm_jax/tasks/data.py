"""From a cached stage task to trainer batches: feature conversion and the trainer's dataset function.

Two feature formats for a decoder-only prefix LM:
  * `StageLMFeatureConverter` (no packing): {"inputs" [b, P], "targets" [b, T], "weights" [b, T]}, what
    musiclm_jax/lm/models.py `TokenLM` reads. Inputs are padded on the LEFT, so SEP stays next to the first target.
  * seqio's `PrefixLMFeatureConverter(pack=True)`: the T5X packed format (decoder_target_tokens,
    decoder_input_tokens, decoder_segment_ids, decoder_positions, decoder_causal_attention, loss weights), several
    examples per row; `TokenLM` reads it too (each segment as its unpacked example, see its module docstring).

    ds = stage_task_dataset(split="train", batch_size=8, seed=0, shard_index=0, num_shards=1,
                            task="synthcaps_coarse", inputs_length=..., targets_length=...)  # or a mixture
    gin:  Trainer dataset = @stage_task_dataset;  stage_task_dataset.task = "synthcaps_coarse"
"""
from __future__ import annotations

import gin
import numpy as np
import seqio
import tensorflow as tf

from musiclm_jax.lm.stages import PAD
from musiclm_jax.train.data import ResumableBatches

FeatureSpec = seqio.FeatureConverter.FeatureSpec


class StageLMFeatureConverter(seqio.FeatureConverter):
    """inputs/targets -> fixed-length inputs (left-padded), targets (right-padded) and target weights."""

    TASK_FEATURES = {"inputs": FeatureSpec(dtype=tf.int32), "targets": FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {"inputs": FeatureSpec(dtype=tf.int32), "targets": FeatureSpec(dtype=tf.int32),
                      "weights": FeatureSpec(dtype=tf.float32)}
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, **kwargs):
        if pack:
            raise ValueError("StageLMFeatureConverter does not pack: use seqio.PrefixLMFeatureConverter(pack=True) "
                             "(feature_converter(pack=True)) for the packed T5X format, which TokenLM also reads")
        super().__init__(pack=False, **kwargs)

    def _convert_features(self, ds, task_feature_lengths):
        p, t = task_feature_lengths["inputs"], task_feature_lengths["targets"]

        def fn(ex):
            inputs = ex["inputs"][-p:]  # keep the end: SEP and the newest conditioning
            targets = ex["targets"][:t]
            n_in, n_t = tf.shape(inputs)[0], tf.shape(targets)[0]
            inputs = tf.concat([tf.fill([p - n_in], tf.constant(PAD, tf.int32)), inputs], 0)
            weights = tf.concat([tf.ones([n_t], tf.float32), tf.zeros([t - n_t], tf.float32)], 0)
            targets = tf.concat([targets, tf.fill([t - n_t], tf.constant(PAD, tf.int32))], 0)
            inputs.set_shape([p]), targets.set_shape([t]), weights.set_shape([t])
            return {"inputs": inputs, "targets": targets, "weights": weights}

        return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        return {"inputs": task_feature_lengths["inputs"], "targets": task_feature_lengths["targets"],
                "weights": task_feature_lengths["targets"]}


def feature_converter(pack: bool = False) -> seqio.FeatureConverter:
    """Unpacked: one example per row; packed: seqio's prefix-LM format (T5X decoder-only models). TokenLM reads both."""
    return seqio.PrefixLMFeatureConverter(pack=True) if pack else StageLMFeatureConverter()


class TaskIterator(ResumableBatches):
    """Numpy batches of a SeqIO task; state = batches consumed (the pipeline is deterministic given the seed),
    so `set_state` resumes the same stream by skipping that many batches."""

    def __init__(self, make_ds, position: int = 0):
        self._make_ds = make_ds
        self.set_state({"position": position})

    def set_state(self, state: dict | None) -> None:
        super().set_state(state)
        self._it = self._make_ds().skip(self.position).as_numpy_iterator()

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        return next(self._it)


def shard_info(shard_index: int | None = None, num_shards: int | None = None) -> seqio.ShardInfo:
    """This host's shard: the trainer's shard_index/num_shards, else jax.process_index()/process_count()."""
    if shard_index is None or num_shards is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        num_shards = jax.process_count() if num_shards is None else num_shards
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
    return seqio.ShardInfo(int(shard_index), int(num_shards))


@gin.configurable
def stage_task_dataset(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int | None = None,
                       num_shards: int | None = None, task: str = gin.REQUIRED, inputs_length: int = gin.REQUIRED,
                       targets_length: int = gin.REQUIRED, pack: bool = False, cache_dirs: tuple[str, ...] = (),
                       task_modules: tuple[str, ...] = ("musiclm_jax.tasks.musiclm_tasks",), shuffle: bool | None = None,
                       repeat: bool | None = None, use_cached: bool = True) -> TaskIterator:
    """The trainer's dataset function for a cached stage task or mixture (`tasks.registry.register_mixture`).

    Each host reads a disjoint shard (seqio.ShardInfo): the trainer passes shard_index/num_shards; left out, they
    come from jax.process_index()/process_count(). `split` "eval" reads the task's "validation" split. Shuffling
    and repetition default to on for train. `use_cached=False` tokenizes on the fly (small data only)."""
    import importlib

    for m in task_modules:
        importlib.import_module(m)
    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
        raise ValueError(f"stage_task_dataset: {task!r} is neither a registered task nor a mixture (check "
                         f"task_modules={task_modules})")
    split = {"eval": "validation"}.get(split, split)
    train = split == "train"
    shard = shard_info(shard_index, num_shards)

    def make():
        ds = seqio.get_dataset(
            task, task_feature_lengths={"inputs": inputs_length, "targets": targets_length},
            dataset_split=split, shuffle=train if shuffle is None else shuffle,
            num_epochs=None if (train if repeat is None else repeat) else 1, use_cached=use_cached, seed=seed,
            shard_info=shard, feature_converter=feature_converter(pack))
        return ds.batch(batch_size, drop_remainder=True)

    return TaskIterator(make)
