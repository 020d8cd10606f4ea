"""Checkpoints: restore onto another mesh, refuse another config, resume after SIGKILL with identical losses."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from musiclm_jax.lm import transformer as tr
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.train import data, partitioning
from musiclm_jax.train.checkpoints import Checkpointer
from musiclm_jax.train.optimizers import make_optimizer, make_schedule
from musiclm_jax.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trainer(mesh, **cfg):
    family = TokenLM(tr.preset("tiny", dtype="float32", num_heads=4, **cfg))
    return Trainer(family, mesh, optimizer=lambda: make_optimizer("adamw", schedule=make_schedule(1e-2, "constant", 0)),
                   rng_impl="rbg")


def test_restore_onto_another_mesh_and_refuse_another_config(tmp_path):
    src = _trainer(partitioning.make_mesh(data=8))
    state = src.init_state()
    ds = data.synthetic_tokens(batch_size=8, vocab_size=64, length=16)
    state, _ = src.train_step(state, next(ds))
    ckpt = Checkpointer(str(tmp_path), keep=2)
    ckpt.save(1, state, ds.get_state(), family="token_lm", force=True)
    ckpt.wait()
    expected = jax.device_get(state)
    assert (tmp_path / "config.gin").exists()

    dst = _trainer(partitioning.make_mesh(data=2, model=4))
    restored, data_state, step = Checkpointer(str(tmp_path)).restore(dst.abstract_target(), family="token_lm")
    assert step == 1 and data_state == {"position": 1}
    wi = restored["params"]["model"]["layers"][0]["mlp"]["wi"]
    assert wi.sharding == dst.state_shardings["params"]["model"]["layers"][0]["mlp"]["wi"]
    assert wi.sharding.spec[1] == "model" and wi.sharding.mesh.shape["model"] == 4
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    # The restored state trains on the new mesh.
    restored, metrics = dst.train_step(restored, next(ds))
    assert np.isfinite(float(metrics["loss"]))

    other = _trainer(partitioning.make_mesh(data=8), d_ff=48)
    with pytest.raises(ValueError, match=r"another config: \['params'\].*\['mlp'\]\['wi'\] is \[\[16, 32\]"):
        Checkpointer(str(tmp_path)).restore(other.abstract_target())


def _losses(model_dir):
    by_step = {}
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                by_step[row["step"]] = row["loss"]  # a resumed run rewrites steps: the last one wins
    return by_step


def _cmd(model_dir, steps):
    return [sys.executable, "-m", "musiclm_jax.train", "--gin_file=gin/experiments/lm_tiny_synthetic.gin",
            f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=8",
            "--gin.TARGET_LENGTH=16", "--gin.train.log_period=1", "--gin.train.checkpoint_period=4",
            "--gin.train.eval_period=0", "--gin.train.progress=False", "--gin.train.tensorboard=False",
            "--gin.train.rng_impl='rbg'", "--gin.make_schedule.schedule='constant'"]


def test_sigkill_then_resume_gives_the_same_losses(tmp_path):
    steps = 24
    # The three runs compile the same programs: a persistent compilation cache makes runs 2 and 3 cheap.
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref_dir, steps), cwd=ROOT, env=env, check=True, capture_output=True)
    reference = _losses(ref_dir)
    assert sorted(reference) == list(range(1, steps + 1))

    proc = subprocess.Popen(_cmd(run_dir, steps), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "4").exists():  # orbax renames the folder when the save is complete
        assert proc.poll() is None and time.time() < deadline, "training exited before its first checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p) for p in os.listdir(run_dir / "checkpoints") if p.isdigit())
    assert killed_at < steps, "the run finished before it was killed"

    subprocess.run(_cmd(run_dir, steps), cwd=ROOT, env=env, check=True, capture_output=True)
    resumed = _losses(run_dir)
    after = [s for s in range(killed_at + 1, steps + 1)]
    assert after and [resumed[s] for s in after] == [reference[s] for s in after]


def test_checkpoints_record_their_model_config_through_export_and_merge(tmp_path):
    """The loaders rebuild a model from what its checkpoint records (no side file, no gin text): nested configs
    round trip; a stage LM's record survives export and merge; an old checkpoint gets one line."""
    from musiclm_jax.lm import stages as st
    from musiclm_jax.mulan.audio import AudioConfig
    from musiclm_jax.mulan.model import MuLanConfig
    from musiclm_jax.mulan.text import minilm_config
    from musiclm_jax.pipeline import load_stage_lm
    from musiclm_jax.train import configs
    from musiclm_jax.train.checkpoints import export_inference, merge_inference
    from musiclm_jax.train.loader import saved_config
    from musiclm_jax.train.trainer import train

    mulan = MuLanConfig(audio=AudioConfig(stage_sizes=(1, 2)), text=minilm_config(max_length=16))
    assert configs.from_dict(MuLanConfig, json.loads(json.dumps(configs.to_dict(mulan)))) == mulan
    with pytest.raises(ValueError, match="fields \\['gone'\\]"):
        configs.from_dict(MuLanConfig, {**configs.to_dict(mulan), "gone": 1})

    layout = st.StageLayout("coarse", st.TINY)
    aligned = TokenLM(tr.preset("tiny", vocab_size=layout.vocab_size, aligned_inputs=True), aligned=layout)
    record = json.loads(json.dumps(aligned.model_config()))
    assert configs.from_dict(st.TokenSizes, record["aligned"]["sizes"]) == st.TINY
    assert configs.from_dict(tr.TransformerConfig, record["transformer"]) == aligned.config

    cfg = tr.preset("tiny", dtype="float32", num_heads=4, vocab_size=64)
    family = TokenLM(cfg)
    mesh = partitioning.make_mesh(devices=jax.devices()[:1])
    for name in ("a", "b"):
        train(family, model_dir=str(tmp_path / name), batch_size=2, num_steps=1, seed=ord(name),
              dataset=lambda **kw: data.synthetic_tokens(vocab_size=64, length=16, **kw),
              mesh_fn=lambda: mesh, progress=False, tensorboard=False, async_checkpoints=False, rng_impl="rbg")
    export_inference(str(tmp_path / "a"), str(tmp_path / "export"))
    merge_inference(str(tmp_path / "a"), str(tmp_path / "b"), 0.5, str(tmp_path / "merged"))
    for name in ("a", "export", "merged"):
        model = load_stage_lm(str(tmp_path / name))
        assert model.cfg == cfg
    assert saved_config(str(tmp_path / "export"), tr.TransformerConfig,
                        meta={"model_config": configs.to_dict(cfg)}) == cfg

    old = Checkpointer(str(tmp_path / "old"), async_save=False)   # a checkpoint written without a model config
    old.save(1, {"params": {"w": np.zeros(2)}}, None, family="token_lm", force=True)
    old.close()
    with pytest.raises(ValueError, match="records no stage-LM config"):
        load_stage_lm(str(tmp_path / "old"))
    with pytest.raises(ValueError, match="records no model config .* pass the MuLanConfig explicitly"):
        saved_config(str(tmp_path / "old"), MuLanConfig)
