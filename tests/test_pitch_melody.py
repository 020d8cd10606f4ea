"""The pitch-class melody stream (melody/pitch.py) and its conditioning of the semantic stage (issue 17)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax.lm import decoding as dec
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr
from musiclm_jax.melody.pitch import REST, PitchMelody, notes_tokens
from tiny_stage import train_tiny_stage, trained_model

SEM = st.StageLayout("semantic", st.TINY_PITCH)
SR = 16000


def _tones(freqs, seconds, gap=0.0):
    """One sine per frequency (0 = silence), `seconds` each."""
    t = np.arange(int(seconds * SR)) / SR
    return np.concatenate([0.3 * np.sin(2 * np.pi * f * t) if f else np.zeros_like(t) for f in freqs]
                          ).astype(np.float32)


def test_notes_become_the_pitch_class_of_each_frame():
    # A4 for 0.32 s (2 frames), rest 0.32 s, C#5 then the same C# an octave down, each 0.16 s; 6.25 Hz frames.
    toks = notes_tokens([69, 73, 61], [0.0, 0.64, 0.80], [0.32, 0.80, 0.96], frames=7)[:, 0]
    np.testing.assert_array_equal(toks, [9, 9, REST, REST, 1, 1, REST])
    # A note covering under half a frame leaves it a rest; the longest pitch class of a frame wins.
    np.testing.assert_array_equal(notes_tokens([60, 62], [0.0, 0.05], [0.05, 0.16], frames=2)[:, 0], [2, REST])
    assert (notes_tokens([], [], [], frames=3) == -1).all()   # no lead line: no melody at all
    with pytest.raises(ValueError, match="as many pitches"):
        notes_tokens([60], [0.0, 1.0], [1.0], frames=2)


def test_the_tracker_hears_the_pitch_class_of_a_hum_whatever_its_octave():
    pm = PitchMelody()
    # A3 (220 Hz), E5 (659 Hz), silence, C4 (262 Hz): 0.64 s each = 4 frames each.
    toks = pm.frame_tokens(_tones([220.0, 659.26, 0.0, 261.63], 0.64), SR)[:, 0]
    assert toks.shape == (16,)
    np.testing.assert_array_equal(toks[[1, 2, 5, 6, 9, 10, 13, 14]], [9, 9, 4, 4, REST, REST, 0, 0])
    assert pm.frame_tokens(_tones([440.0], 1.0), 22050 // 2, frames=3).shape == (3, 1)   # any rate, fixed frames
    with pytest.raises(ValueError, match="mono"):
        pm.frame_tokens(np.zeros((2, 100), np.float32), SR)


def test_the_layout_puts_the_melody_in_the_prefix_and_beside_each_frames_beat():
    inputs, _ = SEM.build(mulan=np.zeros((1, 2), np.int32), semantic=np.zeros((1, 12), np.int32),
                          melody=np.array([[[9], [REST], [-1]]]), tempo=np.array([[4.0, 0.0]]), key=np.array([3]))
    m0 = SEM.offset("melody0")
    np.testing.assert_array_equal(inputs[0, 2:5], [m0 + 9, m0 + REST, st.UNCOND])
    ids = SEM.aligned_ids(inputs, 12)
    assert ids.shape == (1, inputs.shape[1] + 11, 2) and (ids[0, :inputs.shape[1] - 1] == -1).all()
    beat, melody = ids[0, -12:, 0], ids[0, -12:, 1]
    np.testing.assert_array_equal(beat, [0, 2, 4, 6] * 3)   # 4 frames per beat, 8 phases
    b = st.TINY_PITCH.beat_phases
    np.testing.assert_array_equal(melody, [b + 9] * 4 + [b + REST] * 4 + [-1] * 4)   # frame j reads (j * 3) // 12
    # The coarse stage keeps its layout: it hears the melody through the semantic tokens.
    assert st.StageLayout("coarse", st.TINY_PITCH).streams == st.StageLayout("coarse", st.TINY_KEY).streams
    with pytest.raises(ValueError, match="melody_aligned needs one melody stream"):
        st.TokenSizes(melody_levels=2, melody_codes=8, melody_aligned=True)
    with pytest.raises(ValueError, match="melody_aligned needs"):
        st.TokenSizes(melody_levels=1, melody_codes=13, melody_stages=("coarse",), melody_aligned=True)


def test_two_aligned_channels_decode_with_the_cache_as_without():
    cfg = tr.preset("tiny", vocab_size=SEM.vocab_size, dtype="float32", max_len=64, aligned_inputs=True)
    model = tr.Transformer(cfg, rngs=nnx.Rngs(0))
    model.aligned_embed[...] = jax.random.normal(jax.random.key(1), model.aligned_embed.shape) * 0.5
    rng = np.random.default_rng(0)
    inputs, _ = SEM.build(mulan=rng.integers(0, 8, (3, 2)), semantic=np.zeros((3, 8), np.int32),
                          melody=rng.integers(0, 13, (3, 2, 1)), tempo=st.tempo_of(np.full(3, 120.0), 0.0, 25.0),
                          key=np.array([1, 5, -1]))
    aligned = jnp.asarray(SEM.aligned_ids(inputs, 8))
    outs = [dec.sample(model, jnp.asarray(inputs), max_new_tokens=8, rng=jax.random.key(0), temperature=0.0,
                       aligned=aligned, logit_mask_fn=SEM.logit_mask(), use_cache=c)[0] for c in (True, False)]
    np.testing.assert_array_equal(outs[0], outs[1])
    # The melody channel counts: another melody, other tokens.
    other = np.asarray(aligned).copy()
    other[..., 1] = np.where(other[..., 1] >= 0, st.TINY_PITCH.beat_phases + (other[..., 1] + 5) % 12, -1)
    moved = dec.sample(model, jnp.asarray(inputs), max_new_tokens=8, rng=jax.random.key(0), temperature=0.0,
                       aligned=jnp.asarray(other), logit_mask_fn=SEM.logit_mask())[0]
    assert (np.asarray(moved) != np.asarray(outs[0])).any()


def _melody_batch(b, t, seed):
    """Semantic tokens that follow the melody (code = pitch class of the frame) 3 times in 4, random otherwise; one
    melody frame per 2 semantic frames, so only the aligned melody says which code each frame wants."""
    rng = np.random.default_rng(seed)
    pcs = rng.integers(0, 12, (b, t // 2))
    codes = np.where(rng.random((b, t)) < 0.75, np.repeat(pcs, 2, axis=1),
                     rng.integers(0, st.TINY.semantic_codes, (b, t)))
    return SEM.build(mulan=rng.integers(0, st.TINY.mulan_codes, (b, st.TINY.mulan_levels)), semantic=codes,
                     melody=pcs[..., None], tempo=st.tempo_of(np.full(b, 120.0), 0.0, 25.0),
                     key=rng.integers(0, 24, b)), np.repeat(pcs, 2, axis=1)


def test_a_stage_learns_to_follow_the_melody_frame_by_frame():
    model = trained_model(*train_tiny_stage(SEM, lambda i: _melody_batch(32, 8, seed=i)[0], steps=90, lr=2e-2))
    (inputs, _), want = _melody_batch(48, 8, seed=10_000)
    new, _ = dec.sample(model, jnp.asarray(inputs), max_new_tokens=8, rng=jax.random.key(0), temperature=0.0,
                        aligned=jnp.asarray(SEM.aligned_ids(inputs, 8)), logit_mask_fn=SEM.logit_mask())
    follows = np.mean(SEM.targets_to_codes(np.asarray(new)) == want)
    print(f"\ngreedy frames = the melody's pitch class after 90 steps: {follows:.3f} (chance 1/12)")
    assert follows > 0.8


def test_tokenize_reads_the_lead_line_and_speed_copies_move_it():
    import tensorflow as tf

    from musiclm_jax.tasks import preprocessors as pp
    from musiclm_jax.tokenizers import TokenizerSpec, Tokenizers

    toks = Tokenizers.get(TokenizerSpec("random:0", "random:0", "random:0", "pitch"))
    assert isinstance(toks.melody, PitchMelody) and toks.fingerprints()["melody"].startswith("pitch-")
    wave = _tones([440.0], 2.0)
    from_notes = toks.tokenize(wave, SR, notes=([62], [0.0], [2.0]))["melody_tokens"][:, 0]
    tracked = toks.tokenize(wave, SR)["melody_tokens"][:, 0]
    assert len(from_notes) == len(tracked) > 10 and (from_notes == 2).all() and np.mean(tracked == 9) > 0.8
    # A speed copy 2 semitones up: the notes move up 2 and come 2^(2/12) times sooner.
    ex = {"audio": wave, "clip_id": "c1", "lead_notes": {"pitch": np.array([60, 64], np.int32),
                                                         "start": np.array([0.0, 1.0], np.float32),
                                                         "end": np.array([1.0, 2.0], np.float32)}}
    ds = tf.data.Dataset.from_tensors(ex)
    out = list(pp.speed_variants(ds, semitones=(2,)).as_numpy_iterator())
    assert [o["clip_id"] for o in out] == [b"c1", b"c1@+2"]
    np.testing.assert_array_equal(out[1]["lead_notes"]["pitch"], [62, 66])
    np.testing.assert_allclose(out[1]["lead_notes"]["start"], np.array([0.0, 1.0]) / 2 ** (2 / 12), rtol=1e-5)


def test_generation_follows_the_hum_it_is_given_and_names_bad_ones(tmp_path):
    from musiclm_jax.melody.api import load_melody_dir
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0, melody="pitch")
    assert lm.sizes == st.TINY_PITCH and isinstance(lm.melody, PitchMelody)
    hum, other = _tones([440.0], 1.0), _tones([311.13], 1.0)
    np.testing.assert_array_equal(lm.melody_tokens(hum, SR, 1)[0, 1:-1, 0], 9)
    a = lm.generate_full(["a jazz trio"], 0.4, melody=hum, melody_sample_rate=SR, seed=0, progress=False)
    again = lm.generate_full(["a jazz trio"], 0.4, melody=hum, melody_sample_rate=SR, seed=0, progress=False)
    b = lm.generate_full(["a jazz trio"], 0.4, melody=other, melody_sample_rate=SR, seed=0, progress=False)
    np.testing.assert_array_equal(a.waves, again.waves)
    assert (a.tokens["semantic"] != b.tokens["semantic"]).any()
    with pytest.raises(ValueError, match="silent"):
        lm.generate_full(["a jazz trio"], 0.4, melody=np.zeros(SR, np.float32), melody_sample_rate=SR,
                         progress=False)
    with pytest.raises(ValueError, match="at least 0.5 s"):
        lm.generate_full(["a jazz trio"], 0.4, melody=hum[:SR // 10], melody_sample_rate=SR, progress=False)
    # guide_melody: the unconditional branch loses the melody too, so guidance decodes otherwise.
    sharp, dull = (lm.generate_full(["a jazz trio"], 0.4, melody=hum, melody_sample_rate=SR, seed=0, progress=False,
                                    guidance_scale=3.0, guide_melody=g) for g in (True, False))
    assert (sharp.tokens["semantic"] != dull.tokens["semantic"]).any()
    # A model directory's melody/ names the stream with pitch.json (what export writes).
    PitchMelody().save(str(tmp_path / "melody"))
    assert isinstance(load_melody_dir(str(tmp_path / "melody")), PitchMelody)


@pytest.mark.parametrize("gin_file,steps", [("experiments/stage_semantic_quickstart_speed_pitch.gin", 1200),
                                             ("experiments/stage_semantic_quickstart_speed_pitch_warm.gin", 800)])
def test_pitch_experiment_configs_parse(gin_file, steps):
    import gin

    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config([gin_file], ["MODEL_DIR = '/tmp/unused'"])
        assert gin.query_parameter("%TRAIN_STEPS") == steps
        family = gin.query_parameter("train.family").scoped_configurable_fn()
        layout = st.StageLayout("semantic", st.QUICKSTART_PITCH)
        assert family.aligned.streams == layout.streams and family.config.vocab_size == layout.vocab_size
        assert family.melody_prob == 0.3 and family.melody_ids == layout.melody_ids()
        assert gin.query_parameter("stage_task_dataset.task") == "synthcaps_quickstart_speed_pitch_semantic"
        assert gin.query_parameter("stage_task_dataset.inputs_length") == st.QUICKSTART.mulan_levels + 38 + 4
    finally:
        gin.clear_config()


def test_infer_lines_follow_their_melody_file_and_the_job_records_guide_melody(tmp_path):
    import json

    import soundfile as sf

    from musiclm_jax.batch_decode import run_infer
    from musiclm_jax.pipeline import tiny_random

    sf.write(tmp_path / "hum.wav", _tones([440.0], 1.0), SR)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a jazz trio", "id": "a", "melody": "hum.wav"}\n'
                       '{"prompt": "a jazz trio", "id": "b", "melody": "missing.wav"}\n')
    lm = tiny_random(seed=0, melody="pitch")
    lm.sampling.update(guidance_scale=3.0, guide_melody=True)
    s = run_infer(lm, str(prompts), str(tmp_path / "o"), duration_s=0.4, progress=False)
    assert (s["done"], s["failed"]) == (1, 1) and "missing.wav" in s["failed_prompts"][0]["error"]
    assert json.loads((tmp_path / "o" / "job.json").read_text())["sampling"]["guide_melody"] is True
