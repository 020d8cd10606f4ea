"""Stage-LM gin configs: every stage experiment parses with the layout's vocab and guidance dropout; a tiny stage
LM trains through the shared trainer (loss falls) and loads back for generation (pipeline.load_stage_lm)."""
import glob
import json
import os

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax import pipeline
from musiclm_jax.lm import stages as st
from musiclm_jax.train import gin_utils

EXPERIMENTS = sorted(os.path.basename(p) for p in glob.glob(str(gin_utils.GIN_DIR / "experiments" / "stage_*.gin")))


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


SIZES = {"tiny": st.TINY, "paper": st.PAPER, "quickstart": st.QUICKSTART, "tiny_melody": st.TINY_MELODY,
         "quickstart_melody": st.QUICKSTART_MELODY, "quickstart_speed": st.QUICKSTART,
         "quickstart_beat": st.QUICKSTART_BEAT, "quickstart_speed_beat": st.QUICKSTART_BEAT,
         "quickstart_speed_key": st.QUICKSTART_KEY, "quickstart_key": st.QUICKSTART_KEY,
         "quickstart_key_warm": st.QUICKSTART_KEY, "quickstart_speed_pitch": st.QUICKSTART_PITCH,
         "quickstart_speed_pitch_warm": st.QUICKSTART_PITCH, "quickstart_key_beat": st.QUICKSTART_COARSE_BEAT,
         "quickstart_key_beat_warm": st.QUICKSTART_COARSE_BEAT}
MELODY_EXPERIMENTS = [f"stage_{stage}_{size}_melody.gin" for stage in ("semantic", "coarse")
                      for size in ("quickstart", "tiny")]
SPEED_EXPERIMENTS = ["stage_semantic_quickstart_speed.gin"]
BEAT_EXPERIMENTS = ["stage_semantic_quickstart_beat.gin", "stage_semantic_quickstart_speed_beat.gin"]
KEY_EXPERIMENTS = ["stage_semantic_quickstart_speed_key.gin", "stage_coarse_quickstart_key.gin",
                   "stage_coarse_quickstart_key_warm.gin", "stage_coarse_quickstart_key_beat.gin",
                   "stage_coarse_quickstart_key_beat_warm.gin"]
PITCH_EXPERIMENTS = ["stage_semantic_quickstart_speed_pitch.gin", "stage_semantic_quickstart_speed_pitch_warm.gin"]


def test_all_stage_experiments_exist():
    assert EXPERIMENTS == sorted([f"stage_{s}_{z}.gin" for s in st.STAGES for z in ("tiny", "paper", "quickstart")]
                                 + MELODY_EXPERIMENTS + SPEED_EXPERIMENTS + BEAT_EXPERIMENTS + KEY_EXPERIMENTS
                                 + PITCH_EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_stage_experiment_parses_with_layout_vocab_and_dropout(name):
    stage, size = name[len("stage_"):-len(".gin")].split("_", 1)
    gin_utils.parse_config([f"experiments/{name}"], ["MODEL_DIR = '/tmp/x'"])
    family = gin.query_parameter("train.family").scoped_configurable_fn()
    sizes = SIZES[size]
    layout = st.StageLayout(stage, sizes)
    assert family.config.vocab_size == layout.vocab_size
    assert family.uncond_span == layout.cond_span() and family.uncond_id == st.UNCOND
    assert family.uncond_prob == (0.0 if stage == "fine" else 0.1)
    assert family.melody_ids == layout.melody_ids()
    assert (family.melody_prob > 0) == layout.has_melody
    if layout.has_melody:  # MuLan tokens, (coarse: the crop's 25 Hz semantic tokens), its melody frames (2 Hz
        # embedder tokens, or the 6.25 Hz pitch classes with the key and tempo tokens after them), SEP
        crop = gin.query_parameter(f"stage_crop_seconds.{stage}")
        semantic = round(crop * 25) if stage == "coarse" else 0
        rate, extra = (6.25, layout.has_key + 2 * layout.has_beat) if sizes.melody_aligned else (2, 0)
        assert gin.query_parameter("stage_task_dataset.inputs_length") == (
            sizes.mulan_levels + semantic + round(crop * rate) * sizes.melody_levels + extra + 1)
    inputs_len = gin.query_parameter("stage_task_dataset.inputs_length")
    targets_len = gin.query_parameter("stage_task_dataset.targets_length")
    assert inputs_len + targets_len <= family.config.max_len
    if size == "paper":
        assert (family.config.num_layers, family.config.d_model, family.config.d_ff) == (24, 1024, 4096)
    assert family.tempo_ids == layout.tempo_ids() and (family.tempo_prob > 0) == layout.has_beat
    assert family.config.aligned_inputs == (family.aligned is not None)
    assert family.key_ids == layout.key_ids() and (family.key_prob > 0) == layout.has_key
    if layout.has_beat:   # MuLan tokens, (coarse: the crop's 25 Hz semantic tokens,) (the melody frames,) (the key
        # token,) the two tempo tokens, SEP
        crop = gin.query_parameter(f"stage_crop_seconds.{stage}")
        melody = round(crop * 6.25) if sizes.melody_aligned else 0
        semantic = round(crop * 25) if stage == "coarse" else 0
        assert inputs_len == sizes.mulan_levels + semantic + melody + 3 + layout.has_key and family.aligned == layout
    elif layout.has_key:   # coarse: MuLan tokens, the crop's 25 Hz semantic tokens, the key token, SEP
        crop = gin.query_parameter(f"stage_crop_seconds.{stage}")
        assert inputs_len == sizes.mulan_levels + round(crop * 25) + 2 and family.aligned.streams == layout.streams
    if name in SPEED_EXPERIMENTS:   # trains on the speed-augmented task, validates on the plain one
        assert gin.query_parameter("stage_task_dataset.task") == "synthcaps_quickstart_speed_semantic"
        assert gin.query_parameter("eval/stage_task_dataset.task") == "synthcaps_quickstart_semantic"


class _SemanticData:
    """Semantic-stage batches whose targets follow from the MuLan tokens (learnable), resumable by position."""

    def __init__(self, batch_size, seed=0, **_):
        self.batch_size, self.seed, self.position = batch_size, seed, 0
        self.layout = st.StageLayout("semantic", st.TINY)

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])

    def __iter__(self):
        return self

    def __next__(self):
        r = np.random.default_rng((self.seed, self.position))
        self.position += 1
        m = r.integers(0, st.TINY.mulan_codes, (self.batch_size, st.TINY.mulan_levels))
        s = (m[:, :1] * 2 + m[:, 1:] + np.arange(12)[None]) % st.TINY.semantic_codes
        inputs, targets = self.layout.build(mulan=m, semantic=s)
        return {"inputs": inputs, "targets": targets}


def test_tiny_semantic_stage_trains_and_loads_back(tmp_path):
    from musiclm_jax.train.trainer import train

    gin_utils.parse_config(["experiments/stage_semantic_tiny.gin"], [f"MODEL_DIR = '{tmp_path}'"])
    data = lambda split, **kw: _SemanticData(**kw)
    train(dataset=data, eval_dataset=None, num_steps=40, batch_size=16, checkpoint_period=40, log_period=5,
          async_checkpoints=False, progress=False, tensorboard=False)
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    gin.clear_config()
    model = pipeline.load_stage_lm(str(tmp_path))
    assert model.cfg.vocab_size == st.StageLayout("semantic", st.TINY).vocab_size
    batch = next(_SemanticData(4, seed=7))
    logits = model(jnp.asarray(np.concatenate([batch["inputs"], batch["targets"][:, :-1]], 1)),
                   prefix_len=jnp.full((4,), batch["inputs"].shape[1]))
    assert np.isfinite(np.asarray(logits)).all()
    # An inference-only export (no optimizer state) loads to the same model.
    from musiclm_jax.train.checkpoints import export_inference
    export_inference(str(tmp_path), str(tmp_path / "exported"))
    again = pipeline.load_stage_lm(str(tmp_path / "exported"))
    np.testing.assert_allclose(np.asarray(again(jnp.asarray(np.concatenate([batch["inputs"], batch["targets"][:, :-1]], 1)),
                                                prefix_len=jnp.full((4,), batch["inputs"].shape[1]))),
                               np.asarray(logits), atol=1e-6)
    with pytest.raises(ValueError, match="model_dir of a stage-LM training"):
        pipeline.load_stage_lm(str(tmp_path / "nope"))
