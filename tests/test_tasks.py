"""Stage tasks end to end: tiny SynthCaps -> random tiny tokenizers -> Beam DirectRunner cache -> each stage task
reads back with the right shapes, ranges and offsets; crops line up in time; a cache made by other tokenizers is
refused; feature conversion and the trainer's dataset function."""
import json
import os
import shutil

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("apache_beam")

from musiclm_jax import tokenizers as tok_lib  # noqa: E402
from musiclm_jax.data.synthcaps import builder  # noqa: E402
from musiclm_jax.lm.stages import PAD, PAPER, SEP, TINY, StageLayout  # noqa: E402
from musiclm_jax.tasks import cache, data, preprocessors as pp, registry  # noqa: E402

CROPS = {"semantic": 3.0, "coarse": 2.0, "fine": 1.0}  # < the 4 s clips, so crops really are random
TFDS_NAME = "synthcaps/tiny_4s_n4:1.0.0"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    tfds_dir, cache_dir = str(root / "tfds"), str(root / "cache")
    b = builder.Synthcaps(config=builder.make_config("tiny", clip_seconds=4, num_scores=4), data_dir=tfds_dir)
    b.download_and_prepare()
    old = {k: os.environ.get(k) for k in tok_lib.ENV.values()}
    os.environ.update(tok_lib.TokenizerSpec.tiny().to_env())
    names = registry.register_stage_tasks("tt", TFDS_NAME, sizes=TINY, keep=registry.SYNTHCAPS_KEEP,
                                          tfds_data_dir=tfds_dir, crop_seconds=CROPS)
    report_path = str(root / "report.json")
    rc = cache.main(["--tasks=tt_.*", f"--output_cache_dir={cache_dir}", f"--tfds_data_dir={tfds_dir}",
                     "--num_workers=1", "--module_import=musiclm_jax.tasks.registry", f"--report={report_path}"])
    assert rc == 0
    seqio.add_global_cache_dirs([cache_dir])
    with open(report_path) as f:
        report = json.load(f)
    yield {"names": names, "cache_dir": cache_dir, "tfds_dir": tfds_dir, "report": report, "builder": b}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    seqio.set_tfds_data_dir_override(None)


def _read(task, split="train", seed=0):
    ds = seqio.get_mixture_or_task(task).get_dataset(split=split, use_cached=True, shuffle=False, seed=seed)
    return list(ds.as_numpy_iterator())


def test_cache_report_fingerprints_and_shared_tokenization(env):
    toks = tok_lib.Tokenizers.get(tok_lib.TokenizerSpec.tiny())
    splits = {k: v.num_examples for k, v in env["builder"].info.splits.items()}
    for name in env["names"]:
        entry = env["report"]["tasks"][name]
        for split, n in splits.items():
            assert entry[split] == {"examples": n, "failed": 0, "failed_clips": []}
        out = os.path.join(env["cache_dir"], name)
        with open(os.path.join(out, pp.TOKENIZERS_FILE)) as f:
            assert json.load(f)["fingerprints"] == toks.fingerprints()
        assert os.path.exists(os.path.join(out, "COMPLETED"))
        assert not [p for p in os.listdir(out) if p.startswith("beam-temp")]
    # the three tasks share one tokenization: identical cached records
    recs = [open(os.path.join(env["cache_dir"], n, "train.tfrecord-00000-of-00001"), "rb").read()
            for n in env["names"]]
    assert len(recs[0]) > 0
    assert sorted(recs[0]) == sorted(recs[1]) == sorted(recs[2])  # same bytes (shard order may differ)


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_stage_reads_back_with_shapes_ranges_offsets(env, stage):
    layout = StageLayout(stage, TINY)
    exs = _read(f"tt_{stage}")
    assert len(exs) == env["report"]["tasks"][f"tt_{stage}"]["train"]["examples"] > 0
    frames_s, frames_a = int(CROPS[stage] * 25), int(CROPS[stage] * 50)
    want_inputs = {"semantic": TINY.mulan_levels + 1, "coarse": TINY.mulan_levels + frames_s + 1,
                   "fine": frames_a * TINY.coarse_levels + 1}[stage]
    want_targets = frames_s if stage == "semantic" else frames_a * layout.tokens_per_frame
    for ex in exs:
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs.shape == (want_inputs,) and targets.shape == (want_targets,)
        assert inputs[-1] == SEP and inputs.dtype == np.int32
        assert targets.min() >= 4 and targets.max() < layout.vocab_size
        layout.targets_to_codes(targets[None])  # raises if any id is outside its position's range
        if stage != "fine":  # MuLan level q sits in its own range
            for q in range(TINY.mulan_levels):
                lo, hi = layout.streams[f"mulan{q}"]
                assert lo <= inputs[q] < hi


def _full_tokens(env, clip_id, melody=False):
    ds = env["builder"].as_dataset(split="train")
    for ex in tfds.as_numpy(ds):
        if ex["clip_id"] == clip_id:
            toks = tok_lib.Tokenizers.get(tok_lib.TokenizerSpec.tiny(melody=melody))
            return toks.tokenize(ex["audio"].astype(np.float32) / 32768.0, 16000)
    raise AssertionError(clip_id)


def test_melody_semantic_task_reads_its_crop_of_the_melody_stream(env, monkeypatch):
    from musiclm_jax.lm.stages import TINY_MELODY

    monkeypatch.setenv(tok_lib.MELODY_ENV, "random:0")
    registry.register_stage_tasks("tmel", TFDS_NAME, sizes=TINY_MELODY, keep=registry.SYNTHCAPS_KEEP,
                                  tfds_data_dir=env["tfds_dir"], crop_seconds=CROPS)
    layout = StageLayout("semantic", TINY_MELODY)
    ds = seqio.get_mixture_or_task("tmel_semantic").get_dataset(split="train", use_cached=False, shuffle=False,
                                                                 seed=0)
    exs = list(ds.as_numpy_iterator())
    assert exs
    frames = int(CROPS["semantic"] * 2)   # 2 Hz melody frames in the 3 s crop
    for ex in exs[:3]:
        inputs = ex["inputs"]
        assert inputs.shape == (TINY_MELODY.mulan_levels + frames * TINY_MELODY.melody_levels + 1,)
        full = _full_tokens(env, ex["clip_id"], melody=True)["melody_tokens"]
        m0 = int(np.floor(ex["crop_start_seconds"] * 2 + 0.5))
        want = layout.encode_melody(full[None, m0:m0 + frames])[0]
        np.testing.assert_array_equal(inputs[TINY_MELODY.mulan_levels:-1], want)
    # the coarse task: [M | S | melody of its own crop's seconds | SEP]
    coarse = StageLayout("coarse", TINY_MELODY)
    cf = max(1, round(CROPS["coarse"] * 2))
    for ex in list(seqio.get_mixture_or_task("tmel_coarse").get_dataset(
            split="train", use_cached=False, shuffle=False, seed=0).as_numpy_iterator())[:2]:
        full = _full_tokens(env, ex["clip_id"], melody=True)["melody_tokens"]
        m0 = min(int(np.floor(ex["crop_start_seconds"] * 2 + 0.5)), len(full) - cf)
        want = coarse.encode_melody(full[None, m0:m0 + cf])[0]
        np.testing.assert_array_equal(ex["inputs"][-1 - len(want):-1], want)
    # a cache without melody tokens cannot feed a melody-conditioned task
    record = {"mulan": {"levels": 2, "codebook_size": 8}, "semantic": {"codebook_size": 16, "frame_rate": 25.0},
              "acoustic": {"levels": 4, "codebook_size": 16, "frame_rate": 50.0}}
    with pytest.raises(ValueError, match="has none: tokenize with a melody embedder"):
        pp.check_geometry(record, TINY_MELODY, 25.0, 50.0, "this cache")
    pp.check_geometry({**record, "melody": {"levels": 2, "codebook_size": 8, "frame_rate": 2.0}}, TINY_MELODY,
                      25.0, 50.0, "this cache", 2.0)


def test_coarse_crop_lines_up_in_time_and_is_seeded(env):
    layout = StageLayout("coarse", TINY)
    exs = _read("tt_coarse", seed=3)
    for ex in exs:
        full = _full_tokens(env, ex["clip_id"])
        start = float(ex["crop_start_seconds"])
        s0, a0 = int(round(start * 25)), int(round(start * 50))
        n_s = int(CROPS["coarse"] * 25)
        semantic = ex["inputs"][TINY.mulan_levels:-1] - layout.offset("semantic")
        np.testing.assert_array_equal(semantic, full["semantic_tokens"][s0:s0 + n_s])
        codes = layout.targets_to_codes(ex["targets"][None])[0]
        np.testing.assert_array_equal(codes, full["acoustic_tokens"][a0:a0 + 2 * n_s, :TINY.coarse_levels])
        np.testing.assert_array_equal(ex["inputs"][:TINY.mulan_levels] - [layout.offset("mulan0"),
                                                                          layout.offset("mulan1")],
                                      full["mulan_tokens"])
    again = _read("tt_coarse", seed=3)
    assert [float(e["crop_start_seconds"]) for e in again] == [float(e["crop_start_seconds"]) for e in exs]
    starts = {tuple(float(e["crop_start_seconds"]) for e in _read("tt_coarse", seed=s)) for s in range(4)}
    assert len(starts) > 1  # the seed moves the crops


def test_fingerprint_mismatch_and_wrong_layout_refused(env):
    src = os.path.join(env["cache_dir"], "tt_fine")
    names = registry.register_stage_tasks("tx", TFDS_NAME, sizes=TINY, tfds_data_dir=env["tfds_dir"])
    registry.register_stage_tasks("tp", TFDS_NAME, sizes=PAPER, tfds_data_dir=env["tfds_dir"])
    shutil.copytree(src, os.path.join(env["cache_dir"], "tx_fine"))
    shutil.copytree(src, os.path.join(env["cache_dir"], "tp_fine"))
    assert "tx_fine" in names
    path = os.path.join(env["cache_dir"], "tx_fine", pp.TOKENIZERS_FILE)
    with open(path) as f:
        record = json.load(f)
    record["fingerprints"]["codec"] = "0123456789abcdef"
    record["sources"]["codec"] = "runs/another_codec"
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match="other tokenizer checkpoints.*codec: cache 0123456789abcdef"):
        _read("tx_fine")
    with pytest.raises(ValueError, match="do not fit the task's token layout.*mulan levels 2 vs 12"):
        _read("tp_fine")


def test_a_layout_with_fewer_codec_levels_reads_the_cache_prefix(env):
    import dataclasses

    three = dataclasses.replace(TINY, codec_levels=3)      # the tiny codec has 4 levels: keep levels 0-2
    five = dataclasses.replace(TINY, codec_levels=5)
    registry.register_stage_tasks("tq", TFDS_NAME, sizes=three, tfds_data_dir=env["tfds_dir"], crop_seconds=CROPS)
    registry.register_stage_tasks("t5", TFDS_NAME, sizes=five, tfds_data_dir=env["tfds_dir"], crop_seconds=CROPS)
    for name in ("tq_fine", "t5_fine"):
        shutil.copytree(os.path.join(env["cache_dir"], "tt_fine"), os.path.join(env["cache_dir"], name))
    full = {int(e["crop_start_seconds"] * 1000): e for e in _read("tt_fine", seed=1)}
    got = _read("tq_fine", seed=1)
    assert got
    for ex in got:
        want = StageLayout("fine", TINY).targets_to_codes(full[int(ex["crop_start_seconds"] * 1000)]["targets"][None])
        codes = StageLayout("fine", three).targets_to_codes(ex["targets"][None])
        np.testing.assert_array_equal(codes, want[..., :1])   # fine level 0 of 1 = codec level 2
    with pytest.raises(ValueError, match="codec levels 4 vs 5"):
        _read("t5_fine")


def test_feature_converter_and_trainer_dataset_resume(env):
    it = data.stage_task_dataset(split="train", batch_size=2, seed=0, task="tt_semantic", inputs_length=4,
                                 targets_length=80, task_modules=())
    first = next(it)
    assert first["inputs"].shape == (2, 4) and first["targets"].shape == (2, 80)
    np.testing.assert_array_equal(first["inputs"][:, 0], [PAD, PAD])  # left padding keeps SEP last
    assert (first["inputs"][:, -1] == SEP).all()
    np.testing.assert_array_equal(first["weights"].sum(1), [75, 75])
    assert (first["targets"][:, 75:] == PAD).all()
    second = next(it)
    assert it.get_state() == {"position": 2} and second["targets"].shape == (2, 80)
    # Resuming at position 2 gives the batch an uninterrupted run gives there.
    make = lambda: data.stage_task_dataset(split="train", batch_size=2, seed=0, task="tt_semantic",  # noqa: E731
                                           inputs_length=4, targets_length=80, task_modules=())
    fresh = make()
    uninterrupted = [next(fresh) for _ in range(3)]
    resumed = make()
    resumed.set_state({"position": 2})
    third = next(resumed)
    for k in third:
        np.testing.assert_array_equal(uninterrupted[0][k], first[k])
        np.testing.assert_array_equal(third[k], uninterrupted[2][k])
    # packed prefix-LM format (T5X decoder-only)
    ds = seqio.get_dataset("tt_semantic", task_feature_lengths={"inputs": 4, "targets": 80}, dataset_split="train",
                           shuffle=False, use_cached=True, num_epochs=1,
                           feature_converter=data.feature_converter(pack=True))
    ex = next(ds.as_numpy_iterator())
    assert ex["decoder_target_tokens"].shape == (84,) and "decoder_segment_ids" in ex
    with pytest.raises(ValueError, match="does not pack"):
        data.StageLMFeatureConverter(pack=True)
    with pytest.raises(ValueError, match="shard_index"):
        data.stage_task_dataset(batch_size=1, task="tt_semantic", inputs_length=4, targets_length=8,
                                shard_index=2, num_shards=2, task_modules=())


def test_bad_clip_is_counted_and_named_and_bad_config_errors():
    toks = tok_lib.Tokenizers.get(tok_lib.TokenizerSpec.tiny())
    good = (0.1 * np.random.default_rng(0).normal(size=16000)).astype(np.float32)
    bad = good.copy()
    bad[5] = np.nan
    report = {}
    out = list(tok_lib.tokenize_clips(toks, [("a", good, 16000), ("broken", bad, 16000),
                                             ("empty", np.zeros(0, np.float32), 16000)], report))
    assert [c for c, _ in out] == ["a"] and report["failed"] == 2 and report["failed_ids"] == ["broken", "empty"]
    tokens = out[0][1]
    assert tokens["semantic_tokens"].shape == (25,) and tokens["acoustic_tokens"].shape == (50, 4)
    with pytest.raises(ValueError, match="random:<int seed>"):
        tok_lib.load_codec("random:x")
    with pytest.raises(ValueError, match="integer frame rates"):
        pp.crop_grid(25.0, 43.07)
    with pytest.raises(ValueError, match="no registered task matches"):
        cache.select_tasks(["no_such_task_.*"])


def test_coarse_stage_trains_from_the_cache_with_its_gin_experiment(env, tmp_path):
    """The whole data path: the cached task, read by the stage experiment's dataset function, trains the stage LM
    through the shared trainer (the same command as the README's, with the test's task and cache)."""
    import gin

    from musiclm_jax.train import __main__ as train_main

    model_dir = tmp_path / "stage_coarse"
    gin.clear_config()
    try:
        rc = train_main.main(["--gin_file=gin/experiments/stage_coarse_tiny.gin", f"--gin.MODEL_DIR={model_dir}",
                              "--gin.TRAIN_STEPS=40", "--gin.train.log_period=5", "--gin.train.eval_period=0",
                              "--gin.stage_task_dataset.task='tt_coarse'",
                              f"--gin.stage_task_dataset.cache_dirs=('{env['cache_dir']}',)"])
    finally:
        gin.clear_config()  # the experiment's bindings (TransformerConfig, ...) must not leak into later tests
    assert rc == 0
    rows = [json.loads(line) for line in open(model_dir / "metrics.jsonl") if '"loss"' in line]
    losses = [r["loss"] for r in rows]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


# -- multi-host shards, mixtures, uncached reads, packed features --------------------------------------------------
WHOLE_CLIP = {"semantic": 10.0, "coarse": 10.0, "fine": 10.0}  # > the 4 s clips: every crop is the whole clip


def _whole_clip_semantic(env, name: str, *, copy_cache: bool = True) -> str:
    """`<name>_semantic` cropping whole clips (so its examples do not depend on crop seeds), reading a copy of the
    fixture's cache unless `copy_cache` is False."""
    registry.register_stage_tasks(name, TFDS_NAME, sizes=TINY, keep=registry.SYNTHCAPS_KEEP,
                                  tfds_data_dir=env["tfds_dir"], crop_seconds=WHOLE_CLIP)
    dst = os.path.join(env["cache_dir"], f"{name}_semantic")
    if copy_cache and not os.path.exists(dst):
        shutil.copytree(os.path.join(env["cache_dir"], "tt_semantic"), dst)
    return f"{name}_semantic"


def _keys(it) -> list[bytes]:
    return [row.tobytes() for batch in it for row in batch["targets"]]


def test_hosts_read_disjoint_shards_that_cover_the_split(env, monkeypatch):
    import jax

    task = _whole_clip_semantic(env, "tw")
    kw = dict(split="test", batch_size=1, seed=0, task=task, inputs_length=4, targets_length=128, task_modules=(),
              shuffle=False, repeat=False)
    full = _keys(data.stage_task_dataset(**kw, shard_index=0, num_shards=1))
    assert len(full) == env["report"]["tasks"]["tt_semantic"]["test"]["examples"] >= 4
    assert len(set(full)) == len(full)  # whole clips: the targets are a stable key per clip
    parts = [_keys(data.stage_task_dataset(**kw, shard_index=i, num_shards=2)) for i in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(full)  # together exactly once
    # Left out, the shard comes from jax's process index / count (this host is 1 of 2).
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert _keys(data.stage_task_dataset(**kw)) == parts[1]
    # What the trainer passes is what seqio gets.
    seen, real = [], seqio.get_dataset
    monkeypatch.setattr(seqio, "get_dataset", lambda *a, **k: (seen.append(k["shard_info"]), real(*a, **k))[1])
    next(data.stage_task_dataset(**kw, shard_index=0, num_shards=3))
    assert seen == [seqio.ShardInfo(0, 3)]


# One host of a real 2-process jax.distributed job: registers the tasks, reads its default shard (no
# shard_index/num_shards, so it comes from jax.process_index/count) and writes the examples' keys as JSON.
_HOST_SCRIPT = """
import hashlib, json, sys
import jax, seqio
from musiclm_jax.lm.stages import TINY
from musiclm_jax.tasks import data, registry

a = json.loads(sys.argv[1])
for prefix, crops in a["tasks"].items():
    registry.register_stage_tasks(prefix, a["tfds_name"], sizes=TINY, keep=registry.SYNTHCAPS_KEEP,
                                  tfds_data_dir=a["tfds_dir"], crop_seconds=crops)
seqio.add_global_cache_dirs([a["cache_dir"]])
jax.distributed.initialize(coordinator_address=a["coordinator"], num_processes=2, process_id=a["process_id"])
assert (jax.process_index(), jax.process_count()) == (a["process_id"], 2), (jax.process_index(), jax.process_count())
it = data.stage_task_dataset(**a["read"])
keys = [hashlib.sha1(row.tobytes()).hexdigest() for batch in it for row in batch["targets"]]
with open(a["out"], "w") as f:
    json.dump(keys, f)
jax.distributed.shutdown()
"""


def _free_port() -> int:
    import socket

    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"cannot bind a local TCP port for the jax.distributed coordinator: {e}")


def test_two_jax_processes_read_disjoint_default_shards(env, tmp_path):
    """Two OS processes joined by jax.distributed.initialize (CPU): each reads the shard its process index picks.
    Most of its time is each host building the random tokenizers to check the cache's fingerprints."""
    import hashlib
    import subprocess
    import sys
    import time

    task = _whole_clip_semantic(env, "tw")  # whole clips: the targets are a stable key per clip
    read = dict(split="train", batch_size=1, task=task, inputs_length=4, targets_length=128, task_modules=(),
                shuffle=False, repeat=False)
    full = [hashlib.sha1(k).hexdigest() for k in _keys(data.stage_task_dataset(**read, shard_index=0, num_shards=1))]
    assert len(full) == len(set(full)) >= 2
    coordinator = f"127.0.0.1:{_free_port()}"
    # The parent's import path (this checkout), tokenizer env vars (set by `env`) and one plain CPU device per
    # process: conftest's forced 8 host devices are not wanted here.
    child_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    child_env.update(PYTHONPATH=os.pathsep.join(p for p in sys.path if p), JAX_PLATFORMS="cpu")
    outs = [tmp_path / f"host{i}.json" for i in range(2)]
    logs = [open(tmp_path / f"host{i}.log", "w") for i in range(2)]
    procs = []
    for i in range(2):
        args = dict(process_id=i, coordinator=coordinator, tfds_name=TFDS_NAME, tfds_dir=env["tfds_dir"],
                    cache_dir=env["cache_dir"], tasks={"tt": CROPS, "tw": WHOLE_CLIP}, read=read, out=str(outs[i]))
        procs.append(subprocess.Popen([sys.executable, "-c", _HOST_SCRIPT, json.dumps(args)], env=child_env,
                                      stdout=logs[i], stderr=subprocess.STDOUT))
    timed_out, deadline = False, time.monotonic() + 180
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # e.g. one host died before joining and the other waits for it
        timed_out = True
        for p in procs:
            p.kill()
            p.wait()
    for f in logs:
        f.close()
    tails = [(tmp_path / f"host{i}.log").read_text()[-3000:] for i in range(2)]
    assert not timed_out, f"hosts still running after 180 s: {tails}"
    assert [p.returncode for p in procs] == [0, 0], tails
    parts = [json.loads(o.read_text()) for o in outs]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(full)  # together exactly once
    # Which half is whose: the same split as an explicit shard_index read in this process.
    assert parts[1] == [hashlib.sha1(k).hexdigest()
                        for k in _keys(data.stage_task_dataset(**read, shard_index=1, num_shards=2))]


def test_mixture_reads_through_the_dataset_function_at_its_rates(env):
    whole = _whole_clip_semantic(env, "tw")
    name = registry.register_mixture("tt_mix_semantic", {"tt_semantic": 1.0, whole: 3.0})
    it = data.stage_task_dataset(split="train", batch_size=50, seed=0, task=name, inputs_length=4,
                                 targets_length=128, task_modules=())
    lengths = np.concatenate([next(it)["weights"].sum(1) for _ in range(8)])  # 400 examples
    crop = int(CROPS["semantic"] * 25)
    assert set(lengths) == {crop, 100}  # tt_semantic crops 3 s; the whole-clip task gives all 4 s
    frac = float(np.mean(lengths == crop))
    assert abs(frac - 0.25) < 0.07, frac  # rates 1:3
    with pytest.raises(ValueError, match="unregistered tasks"):
        registry.register_mixture("bad_mix", {"tt_semantic": 1.0, "no_such_task": 1.0})
    with pytest.raises(ValueError, match="neither a registered task nor a mixture"):
        data.stage_task_dataset(batch_size=1, task="no_such_mixture", inputs_length=4, targets_length=8,
                                task_modules=())


def test_tokenizer_check_applies_to_cached_reads_only(env):
    cached = _whole_clip_semantic(env, "tw")
    # A cache whose record names another codec: refused when read from the cache ...
    task = _whole_clip_semantic(env, "tv")
    path = os.path.join(env["cache_dir"], task, pp.TOKENIZERS_FILE)
    with open(path) as f:
        record = json.load(f)
    record["fingerprints"]["codec"] = "0123456789abcdef"
    with open(path, "w") as f:
        json.dump(record, f)
    kw = dict(split="train", batch_size=1, seed=0, inputs_length=4, targets_length=128, task_modules=(),
              shuffle=False, repeat=False)
    with pytest.raises(ValueError, match="other tokenizer checkpoints"):
        data.stage_task_dataset(**kw, task=task)
    # ... but an uncached read tokenizes on the fly with the configured tokenizers and needs no record, whether
    # a (mismatched) cache exists or none does.
    fly = _keys(data.stage_task_dataset(**kw, task=task, use_cached=False))
    nocache = _whole_clip_semantic(env, "tn", copy_cache=False)
    assert pp.read_cache_record(nocache) is None
    fly_nocache = _keys(data.stage_task_dataset(**kw, task=nocache, use_cached=False))
    want = sorted(_keys(data.stage_task_dataset(**kw, task=cached)))
    assert sorted(fly) == sorted(fly_nocache) == want  # the same tokens as the cache made by these tokenizers


def test_packed_features_train_token_lm_through_the_trainer(env):
    import jax

    from musiclm_jax.lm import transformer as tr
    from musiclm_jax.lm.models import TokenLM
    from musiclm_jax.lm.stages import UNCOND
    from musiclm_jax.train import partitioning
    from musiclm_jax.train.optimizers import make_optimizer, make_schedule
    from musiclm_jax.train.trainer import Trainer

    layout = StageLayout("semantic", TINY)
    it = data.stage_task_dataset(split="train", batch_size=2, seed=0, task="tt_semantic", inputs_length=8,
                                 targets_length=160, task_modules=(), pack=True)
    batch = next(it)
    assert {"decoder_target_tokens", "decoder_segment_ids", "decoder_causal_attention"} <= set(batch)
    np.testing.assert_array_equal(batch["decoder_segment_ids"].max(1), [2, 2])  # two 3 s crops per 168-token row
    family = TokenLM(tr.preset("tiny", vocab_size=layout.vocab_size, dtype="float32"), uncond_prob=0.5,
                     uncond_span=layout.cond_span(), uncond_id=UNCOND)
    assert family.tokens(batch) == 4 * 75 and family.flops(batch) == tr.flops_per_token(family.config, 168) * 2 * 168
    trainer = Trainer(family, partitioning.make_mesh(devices=jax.devices()[:1]), rng_impl="rbg",
                      optimizer=lambda: make_optimizer("adamw", schedule=make_schedule(1e-2, "constant", 0)))
    state = trainer.init_state()
    losses = []
    for b in (batch, next(it), next(it)):
        state, metrics = trainer.train_step(state, b)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and int(metrics["skipped_steps"]) == 0, losses


def test_beam_workers_get_the_jobs_tokenizers_and_refuse_others(env, monkeypatch):
    spec = tok_lib.TokenizerSpec.tiny()
    fingerprints = tok_lib.Tokenizers.get(spec).fingerprints()
    # The fixture's cache job ran its worker setup (seqio's setup_fn) in this process: the driver's record is known.
    assert pp._JOB_FINGERPRINTS[json.dumps(spec.to_env(), sort_keys=True)] == fingerprints
    for var in tok_lib.ENV.values():  # a Dataflow worker starts with neither gin nor the driver's environment
        monkeypatch.delenv(var)
    monkeypatch.setattr(pp, "_JOB_FINGERPRINTS", {})
    pp.configure_worker(spec.to_env(), fingerprints)
    assert pp.tokenizer_spec() == spec
    kw = dict(split="train", batch_size=1, seed=0, inputs_length=4, targets_length=128, task_modules=(),
              shuffle=False, repeat=False, use_cached=False)
    task = _whole_clip_semantic(env, "tz", copy_cache=False)
    assert _keys(data.stage_task_dataset(**kw, task=task))
    # A worker whose checkpoint under the same path is another one (a stale local copy) stops the job.
    pp.configure_worker(spec.to_env(), {**fingerprints, "codec": "0123456789abcdef"})
    with pytest.raises(ValueError, match="this worker's tokenizers are not the job's .*codec: worker .* vs job "
                                         "0123456789abcdef"):
        list(data.stage_task_dataset(**kw, task=task))


def test_speed_variants_tokenize_each_clip_at_other_keys_and_tempi(env):
    from musiclm_jax.audio.io import change_speed
    from musiclm_jax.data.synthcaps import captions

    names = registry.register_stage_tasks("tspeed", TFDS_NAME, sizes=TINY, keep=registry.SYNTHCAPS_KEEP,
                                          tfds_data_dir=env["tfds_dir"], crop_seconds=CROPS, splits=["train"],
                                          speed_semitones=(-2, 3))
    task = seqio.get_mixture_or_task(names[0])
    assert task.splits == ("train",)   # training data only
    source = seqio.get_mixture_or_task("tt_semantic").source.get_dataset(split="train", shuffle=False)
    clips = {ex["clip_id"].decode(): ex for ex in source.as_numpy_iterator()}
    pre = task.source.get_dataset(split="train", shuffle=False)
    for prep in task.preprocessors[:1]:
        pre = prep(pre)
    out = list(pre.as_numpy_iterator())
    assert len(out) == 3 * len(clips)
    by_id = {ex["clip_id"].decode(): ex for ex in out}
    for cid, orig in clips.items():
        np.testing.assert_array_equal(by_id[cid]["audio"], orig["audio"])   # the originals, unchanged
        for k in (-2, 3):
            ex = by_id[f"{cid}@{k:+d}"]
            want = change_speed(orig["audio"].astype(np.float32), 2 ** (k / 12))
            assert ex["audio"].dtype == np.int16 and abs(len(ex["audio"]) - len(want)) <= 1
            assert ex["bpm"] == pytest.approx(orig["bpm"] * 2 ** (k / 12), rel=1e-5)
            assert ex["caption"].decode() == captions.restate(orig["caption"].decode(), semitones=k,
                                                              bpm=float(orig["bpm"]) * 2 ** (k / 12))
            if orig["key"]:
                assert ex["key"] != orig["key"] or k % 12 == 0
    # through tokenize and the stage layout: each copy has tokens of its own (shorter / longer) audio
    stage = list(task.get_dataset(split="train", use_cached=False, shuffle=False, seed=0).as_numpy_iterator())
    assert len(stage) == 3 * len(clips) and all(ex["targets"].size for ex in stage)
    with pytest.raises(ValueError, match="non-zero integers"):
        pp.speed_variants(source, semitones=(0,))
