"""Offline tokenization: caches stage tasks with seqio's Beam transforms (TFRecords, info, stats, COMPLETED).

Local, N worker processes (DirectRunner):

    MUSICLM_CODEC_DIR=runs/codec MUSICLM_SEMANTIC_DIR=runs/w2v MUSICLM_MULAN_DIR=runs/mulan \\
    python -m musiclm_jax.tasks.cache --tasks='synthcaps_(semantic|coarse|fine)' --output_cache_dir=cache --num_workers=2

Dataflow (the same job, scaled out; workers need this package and the tokenizer checkpoints on GCS):

    python -m musiclm_jax.tasks.cache --tasks='synthcaps_.*' --output_cache_dir=gs://BUCKET/cache \\
        --tfds_data_dir=gs://BUCKET/tfds --pipeline_options=--runner=DataflowRunner,--project=PROJECT,\\
--region=REGION,--temp_location=gs://BUCKET/tmp,--setup_file=./setup.py,--max_num_workers=64,\\
--experiments=use_runner_v2 \\
        (Flink: --pipeline_options=--runner=FlinkRunner,--flink_master=HOST:8081,--environment_type=LOOPBACK)

The three stage tasks of one dataset have the same pre-cache part: they are tokenized once and the result is
written to each task's cache directory. Each directory also gets `tokenizers.json` (which checkpoints made the
tokens; reading checks it) and `failed_clips-<split>.txt` (clips that failed to tokenize, one per line).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys

log = logging.getLogger("musiclm_jax.tasks.cache")
DEFAULT_MODULES = ("musiclm_jax.tasks.musiclm_tasks",)


def _precache_key(task) -> tuple:
    """Tasks with equal keys produce identical cached examples (same source and pre-cache preprocessors)."""
    src = task.source
    parts = [type(src).__name__, getattr(src, "tfds_dataset", None) and src.tfds_dataset.name,
             getattr(src, "tfds_dataset", None) and src.tfds_dataset.data_dir, repr(getattr(src, "splits", None))]
    for p in task.preprocessors:
        if type(p).__name__ == "CacheDatasetPlaceholder":
            break
        kw = {k: v for k, v in sorted(getattr(p, "keywords", {}).items()) if k != "task_name"}
        parts.append((getattr(p, "__name__", repr(p)), repr(kw)))
    return tuple(parts)


def _error_of(ex) -> str:
    """The tokenize error message of a cached example ('' when it tokenized)."""
    from musiclm_jax.tasks.preprocessors import ERROR_KEY

    v = ex[ERROR_KEY]
    v = v.numpy() if hasattr(v, "numpy") else v
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def build_command(tfds_name: str, data_dir: str | None) -> str:
    """The `musiclm-jax data build` line that builds TFDS dataset `tfds_name` ('synthcaps/tiny_4s_n4:1.0.0')."""
    dataset, _, config = tfds_name.split(":")[0].partition("/")
    where = f" --data_dir {data_dir or '~/tensorflow_datasets'}"
    if dataset == "synthcaps" and config:
        try:
            from musiclm_jax.data.synthcaps.builder import CORPUS_CONFIGS

            bases = "|".join(sorted(map(re.escape, CORPUS_CONFIGS), key=len, reverse=True))
            m = re.fullmatch(rf"({bases})(?:_(\d+)hz)?(?:_(\d+(?:p\d+)?)s)?(?:_n(\d+))?(?:_seed(\d+))?", config)
        except ImportError:
            m = None
        if m:
            base, sr, secs, n, seed = m.groups()
            flags = "".join(f" --{flag} {v}" for flag, v in (("sample_rate", sr), ("clip_seconds", secs and
                            secs.replace("p", ".")), ("num_scores", n), ("seed", seed)) if v)
            return f"musiclm-jax data build --dataset synthcaps --config {base}{flags}{where}"
    if dataset == "audio_captions":
        return f"musiclm-jax data build --dataset audio_captions --config {config or '16khz'} --manual_dir AUDIO{where}"
    return f"musiclm-jax data build --dataset {dataset}" + (f" --config {config}" if config else "") + where


def task_splits(task, tfds_data_dir: str | None = None):
    """`task.splits`, or one line naming the source dataset that is not built and the command that builds it."""
    try:
        return task.splits
    except ValueError as e:
        if "has no splits" not in str(e):
            raise
        tfds_ds = getattr(task.source, "tfds_dataset", None)
        if tfds_ds is None or not tfds_ds.name:
            raise ValueError(f"task {task.name}: its data source has no splits (is its dataset built?)") from None
        data_dir = tfds_data_dir or tfds_ds.data_dir
        raise ValueError(f"task {task.name}: its source dataset {tfds_ds.name} is not built in "
                         f"{data_dir or 'the default TFDS directory'}: build it with "
                         f"`{build_command(tfds_ds.name, data_dir)}`, or pass --tfds_data_dir where it is built"
                         ) from None


def import_task_modules(modules) -> None:
    """Imports the modules that register the tasks; a missing one is one line naming it."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name and (m == e.name or m.startswith(e.name + ".")):
                raise ValueError(f"--module_import {m}: no module named {e.name!r} (it must be importable: a module "
                                 f"that registers the tasks, e.g. {DEFAULT_MODULES[0]})") from None
            raise ValueError(f"--module_import {m}: it imports {e.name!r}, which is not installed") from None


def select_tasks(patterns) -> list[str]:
    import seqio

    regex = re.compile(r"(%s)\Z" % "|".join(patterns or [".*"]))
    names = [t for t in seqio.TaskRegistry.names() if regex.match(t)]
    if not names:
        raise ValueError(f"no registered task matches {patterns}: check --tasks and --module_import "
                         f"(registered: {sorted(seqio.TaskRegistry.names())[:20]}...)")
    return names


def pipeline_options_for(num_workers: int, extra=()) -> list[str]:
    """DirectRunner options for `num_workers` local processes, unless `extra` names another runner."""
    extra = list(extra)
    if any(o.startswith("--runner=") for o in extra):
        return extra
    if num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1, got {num_workers}")
    mode = "multi_processing" if num_workers > 1 else "in_memory"
    return ["--runner=DirectRunner", f"--direct_num_workers={num_workers}", f"--direct_running_mode={mode}",
            *extra]


def cache_tasks(task_names, output_cache_dir: str, *, pipeline_options=("--runner=DirectRunner",),
                modules_to_import=DEFAULT_MODULES, overwrite: bool = False, min_shards: int = 1,
                tfds_data_dir: str | None = None) -> dict:
    """Runs the Beam cache job for `task_names`; returns the job report (examples and failed clips per task)."""
    import apache_beam as beam
    import seqio
    import tensorflow as tf
    from seqio import beam_utils

    from musiclm_jax import tokenizers as tok_lib
    from musiclm_jax.tasks import preprocessors as pp

    if tfds_data_dir:
        seqio.set_tfds_data_dir_override(tfds_data_dir)
    groups: dict[tuple, list] = {}
    for name in task_names:
        task = seqio.TaskRegistry.get(name)
        if not task.supports_caching or not task_splits(task, tfds_data_dir):
            log.info("skipping task %s (no caching or no splits)", name)
            continue
        out = os.path.join(output_cache_dir, seqio.get_task_dir_from_name(name))
        if tf.io.gfile.exists(os.path.join(out, "COMPLETED")):
            if not overwrite:
                log.info("task %s is already cached in %s (pass --overwrite to redo it)", name, out)
                continue
            tf.io.gfile.rmtree(out)
        elif tf.io.gfile.exists(out):  # a job that died half-way: start this task afresh
            log.warning("removing incomplete cache %s", out)
            tf.io.gfile.rmtree(out)
        groups.setdefault(_precache_key(task), []).append((task, out))
    if not groups:
        return {"tasks": {}, "note": "nothing to do"}

    spec = pp.tokenizer_spec()
    record = tok_lib.Tokenizers.get(spec).describe()
    # Every worker (a local process or a Dataflow VM) is told the job's checkpoints and checks it loads what the
    # driver fingerprinted: tokenizers.json then says what the workers really ran.
    setup = functools.partial(pp.configure_worker, spec.to_env(), record["fingerprints"])
    tf.io.gfile.makedirs(output_cache_dir)
    options = beam.options.pipeline_options.PipelineOptions(list(pipeline_options))
    with beam.Pipeline(options=options) as pipeline:
        for members in groups.values():
            first = members[0][0]
            for split in first.splits:
                label = f"{first.name}_{split}"
                pat = beam_utils.PreprocessTask(first, split, modules_to_import=list(modules_to_import),
                                                tfds_data_dir=tfds_data_dir, setup_fn=setup)
                num_shards = max(len(pat.shards), min_shards)
                examples = (pipeline | f"{label}_tokenize" >> pat
                            | f"{label}_shuffle" >> beam.Reshuffle())
                failed = (examples | f"{label}_failed_names" >> beam.Map(_error_of)
                          | f"{label}_failed" >> beam.Filter(bool))
                for task, out in members:
                    tl = f"{task.name}_{split}"
                    _ = examples | f"{tl}_write" >> beam_utils.WriteExampleTfRecord(
                        seqio.get_cached_tfrecord_prefix(out, split), num_shards=num_shards)
                    _ = (examples | f"{tl}_info" >> beam_utils.GetInfo(num_shards)
                         | f"{tl}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(out, split)))
                    _ = (examples | f"{tl}_stats" >> beam_utils.GetStats(task.output_features)
                         | f"{tl}_write_stats" >> beam_utils.WriteJson(seqio.get_cached_stats_path(out, split)))
                    _ = failed | f"{tl}_write_failed" >> beam.io.WriteToText(
                        os.path.join(out, f"failed_clips-{split}"), file_name_suffix=".txt", num_shards=1,
                        shard_name_template="")

    report = {"output_cache_dir": output_cache_dir, "tokenizers": record, "tasks": {}}
    for members in groups.values():
        for task, out in members:
            tok_lib.write_json(os.path.join(out, pp.TOKENIZERS_FILE), record)
            entry = {}
            for split in task.splits:
                with tf.io.gfile.GFile(seqio.get_cached_stats_path(out, split)) as f:
                    examples = int(json.load(f).get("examples", 0))
                path = os.path.join(out, f"failed_clips-{split}.txt")
                failed = [ln for ln in tf.io.gfile.GFile(path).read().splitlines() if ln] \
                    if tf.io.gfile.exists(path) else []
                entry[split] = {"examples": examples - len(failed), "failed": len(failed), "failed_clips": failed}
            report["tasks"][task.name] = entry
            if tokenized_nothing(entry):  # left incomplete: the next run redoes it instead of reading an empty cache
                report.setdefault("tokenized_nothing", []).append(task.name)
                continue
            with tf.io.gfile.GFile(os.path.join(out, "COMPLETED"), "w") as f:
                f.write(json.dumps(entry))
    return report


def tokenized_nothing(entry: dict) -> bool:
    """True when a task's report entry ({split: {examples, failed, failed_clips}}) has clips that all failed."""
    return bool(entry) and all(s["examples"] == 0 for s in entry.values()) and any(s["failed"] for s in entry.values())


def check_something_tokenized(report: dict) -> None:
    """One line (ValueError) when some task tokenized no clip at all: every clip failed."""
    bad = report.get("tokenized_nothing") or [n for n, e in report.get("tasks", {}).items() if tokenized_nothing(e)]
    if not bad:
        return
    failed = [c for n in bad for s in report["tasks"][n].values() for c in s["failed_clips"]]
    where = os.path.join(report.get("output_cache_dir", "."), "TASK_DIR", "failed_clips-<split>.txt")
    raise ValueError(f"tokenized no clip of task(s) {', '.join(bad)}: all {len(failed)} clip(s) failed "
                     f"(first: {failed[0]}); every failed clip is listed in {where}; those caches are left "
                     "incomplete (not marked COMPLETED)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, help="comma-separated regexes of task names, e.g. 'synthcaps_.*'")
    p.add_argument("--output_cache_dir", required=True, help="where the token cache goes (local path or gs://)")
    p.add_argument("--num_workers", type=int, default=1, help="local DirectRunner worker processes")
    p.add_argument("--module_import", action="append", default=None,
                   help=f"module(s) registering the tasks (default {', '.join(DEFAULT_MODULES)})")
    p.add_argument("--tfds_data_dir", default=None, help="TFDS data directory of the source datasets")
    p.add_argument("--pipeline_options", default="",
                   help="comma-separated Beam options, e.g. --runner=DataflowRunner,--project=P,... "
                        "(with a --runner, --num_workers is ignored)")
    p.add_argument("--min_shards", type=int, default=1, help="minimum output TFRecord shards per split")
    p.add_argument("--overwrite", action="store_true", help="re-tokenize tasks that are already cached")
    p.add_argument("--report", default=None, help="write the job report (JSON) here as well")
    from musiclm_jax.train import gin_utils

    gin_utils.add_gin_arguments(p, "gin file(s), e.g. gin/runs/tokenize_tiny.gin")


def run(args: argparse.Namespace) -> dict:
    modules = args.module_import or list(DEFAULT_MODULES)
    import_task_modules(modules)
    if args.gin_file or args.gin_bindings:
        import musiclm_jax.tasks.preprocessors  # noqa: F401 -- registers the configurables
        from musiclm_jax.train import gin_utils

        # Not finalized: the tokenizers' modules (imported later, when they are built) still register configurables.
        gin_utils.parse_config(args.gin_file, args.gin_bindings, args.gin_search_path)
    names = select_tasks([t for t in args.tasks.split(",") if t])
    options = pipeline_options_for(args.num_workers, [o for o in args.pipeline_options.split(",") if o])
    report = cache_tasks(names, args.output_cache_dir, pipeline_options=options, modules_to_import=modules,
                         overwrite=args.overwrite, min_shards=args.min_shards, tfds_data_dir=args.tfds_data_dir)
    text = json.dumps(report, indent=1)
    if args.report:  # local or a bucket path
        import tensorflow as tf

        with tf.io.gfile.GFile(args.report, "w") as f:
            f.write(text)
    print(text)
    check_something_tokenized(report)
    return report


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m musiclm_jax.tasks.cache", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
