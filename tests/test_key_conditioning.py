"""Key conditioning of the semantic and coarse stages: prompt parsing, the key token, learning, the pipeline."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.lm import decoding as dec
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.musical_key import check_key, key_from_text, key_index, key_name
from tiny_stage import train_tiny_stage, trained_model

SEM = st.StageLayout("semantic", st.TINY_KEY)
COARSE = st.StageLayout("coarse", st.TINY_KEY)


@pytest.mark.parametrize("text,key", [
    ("a bossa nova in F# minor at 120 BPM", "F# minor"), ("E-flat major, slow and warm", "Eb major"),
    ("in Bb major", "Bb major"), ("B minor blues", "B minor"), ("C sharp minor nocturne", "C# minor"),
    ("Ab min groove", "Ab minor"), ("in the key of G Major", "G major"), ("F♯ minor, 90 bpm", "F# minor"),
    ("a calm piano piece", None), ("plays a minor role", None), ("a D minute waltz", None),
    ("cellos and bass, 100 BPM", None)])
def test_key_from_text_reads_only_a_stated_key(text, key):
    got = key_from_text(text)
    assert (None if got is None else key_name(got)) == key


def test_key_names_indices_and_one_line_errors():
    assert key_index("F#", "minor") == 13 == key_index("Gb", "minor") and key_index("C", "major") == 0
    assert [key_name(key_index(*key_name(i).split())) for i in range(24)] == [key_name(i) for i in range(24)]
    assert check_key("f# minor", 2) == [13, 13] and check_key([None, 3], 2) == [None, 3]
    for bad, match in (("H major", "must name a key"), (24, r"index in \[0, 24\)"), (["C major"], "1 values for 2"),
                       (True, "must be a key name")):
        with pytest.raises(ValueError, match=match):
            check_key(bad, 2)
    with pytest.raises(ValueError, match="a key is a tonic"):
        key_index("C", "dorian")


def test_key_token_layout():
    mulan = np.zeros((2, st.TINY.mulan_levels), np.int32)
    key = np.asarray([13, -1])
    tempo = st.tempo_of([120.0, 90.0], 0.0, 25.0)
    inputs, targets = SEM.build(mulan=mulan, semantic=np.ones((2, 30), np.int32), tempo=tempo, key=key)
    lo, hi = SEM.key_ids()
    # [M, key, tempo, start, SEP]: the tempo tokens stay last, so the beat phases read as without a key.
    assert inputs.shape == (2, st.TINY.mulan_levels + 4) and inputs[0, -4] == lo + 13 and inputs[1, -4] == st.UNCOND
    beat = st.StageLayout("semantic", st.TINY_BEAT)
    b_inputs = beat.build_inputs(mulan=mulan, tempo=tempo)
    np.testing.assert_array_equal(SEM.aligned_ids(inputs, 30)[:, -30:], beat.aligned_ids(b_inputs, 30)[:, -30:])
    # The coarse stage: [M, S, key, SEP]; each acoustic frame still reads the semantic token of its time.
    semantic = np.arange(20)[None].repeat(2, 0) % st.TINY.semantic_codes
    acoustic = np.zeros((2, 40, st.TINY.codec_levels), np.int32)
    c_inputs, c_targets = COARSE.build(mulan=mulan, semantic=semantic, acoustic=acoustic, key=key)
    plain = st.StageLayout("coarse", st.TINY)
    p_inputs = plain.build_inputs(mulan=mulan, semantic=semantic)
    assert c_inputs.shape[1] == p_inputs.shape[1] + 1 and c_inputs[0, -2] == COARSE.key_ids()[0] + 13
    n = c_targets.shape[1]
    np.testing.assert_array_equal(COARSE.aligned_ids(c_inputs, n)[:, -n:], plain.aligned_ids(p_inputs, n)[:, -n:])
    # Guidance may drop the key too; the fine stage and layouts without a key are untouched.
    assert (SEM.uncond_inputs(inputs)[0, -4] == lo + 13) and (SEM.uncond_inputs(inputs, drop_key=True)[:, -4]
                                                               == st.UNCOND).all()
    assert st.StageLayout("fine", st.TINY_KEY).vocab_size == st.StageLayout("fine", st.TINY).vocab_size
    assert st.stage_key_ids("coarse", st.TINY_KEY) == COARSE.key_ids() and st.stage_key_ids("semantic", st.TINY_BEAT) \
        == (0, 0)
    assert st.stage_aligned("coarse", st.TINY_KEY, enabled=True) == COARSE
    only_semantic = st.StageLayout("coarse", dataclasses.replace(st.TINY_KEY, key_stages=("semantic",)))
    assert not only_semantic.has_key and only_semantic.build_inputs(mulan=mulan, semantic=semantic).shape \
        == p_inputs.shape
    with pytest.raises(ValueError, match="takes no key"):
        plain.build_inputs(mulan=mulan, semantic=semantic, key=key)
    with pytest.raises(ValueError, match=r"key must be int \[batch\]"):
        SEM.build_inputs(mulan=mulan, key=np.asarray([24, 0]))
    with pytest.raises(ValueError, match="key_stages must name"):
        st.TokenSizes(key_stages=("fine",))


def test_to_stage_turns_the_clips_key_and_mode_into_the_key_token():
    import tensorflow as tf

    from musiclm_jax.tasks import preprocessors as pp

    ex = {"mulan_tokens": np.zeros((st.TINY.mulan_levels,), np.int32), "semantic_tokens": np.arange(50) % 16,
          "acoustic_tokens": np.zeros((100, st.TINY.codec_levels), np.int32), "bpm": np.float32(100.0)}
    for example, want in ((dict(ex, key="Eb", mode="minor"), key_index("Eb", "minor")), (ex, -1)):
        for stage, pos in (("semantic", -4), ("coarse", -2)):
            ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in example.items()})
            out = next(pp.to_stage(ds, stage=stage, sizes=st.TINY_KEY, semantic_rate=25.0).as_numpy_iterator())
            layout = st.StageLayout(stage, st.TINY_KEY)
            assert out["inputs"][pos] == layout.encode_key(np.asarray([want]))[0, 0], (stage, want)


def test_key_dropout_forgets_the_key_of_some_rows_only():
    lo, hi = SEM.key_ids()
    cfg = tr.preset("tiny", vocab_size=SEM.vocab_size, dtype="float32", max_len=64, aligned_inputs=True)
    family = TokenLM(cfg, aligned=SEM, key_prob=0.5, key_ids=(lo, hi), uncond_id=st.UNCOND)
    inputs, targets = SEM.build(mulan=np.ones((64, st.TINY.mulan_levels), np.int32),
                                semantic=np.ones((64, 8), np.int32), key=np.full(64, 5))
    out = np.asarray(family.drop_conditioning({"inputs": jnp.asarray(inputs), "targets": targets},
                                              jax.random.key(0))["inputs"])
    dropped = out[:, -4] == st.UNCOND
    assert 10 < dropped.sum() < 54 and (np.delete(out, -4, axis=1) == np.delete(inputs, -4, axis=1)).all()
    with pytest.raises(ValueError, match="key_ids"):
        TokenLM(cfg, aligned=SEM, key_prob=0.5)


def _key_batch(b, t, seed):
    """Semantic tokens that are the key's own code (key // 2) 3 times in 4 and random otherwise, the MuLan tokens
    random: only the key token says which code to expect first."""
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 24, b)
    codes = np.where(rng.random((b, t)) < 0.75, key[:, None] // 2, rng.integers(0, st.TINY.semantic_codes, (b, t)))
    return SEM.build(mulan=rng.integers(0, st.TINY.mulan_codes, (b, st.TINY.mulan_levels)), semantic=codes,
                     tempo=st.tempo_of(np.full(b, 120.0), 0.0, 25.0), key=key), key


def test_a_stage_learns_to_read_the_key_and_decoding_follows_it():
    model = trained_model(*train_tiny_stage(SEM, lambda i: _key_batch(32, 8, seed=i)[0], steps=90, lr=2e-2))
    (inputs, _), key = _key_batch(48, 8, seed=10_000)
    new, _ = dec.sample(model, jnp.asarray(inputs), max_new_tokens=8, rng=jax.random.key(0), temperature=0.0,
                        aligned=jnp.asarray(SEM.aligned_ids(inputs, 8)), logit_mask_fn=SEM.logit_mask())
    codes = SEM.targets_to_codes(np.asarray(new))
    first = np.mean(codes[:, 0] == key // 2)
    print(f"\ngreedy first token = the asked key's code after 90 steps: {first:.3f} (chance 1/12)")
    assert first > 0.8 and np.mean(codes == key[:, None] // 2) > 0.8


def test_pipeline_reads_the_prompt_key_or_the_one_given():
    from musiclm_jax.pipeline import tiny_random

    lm, plain_lm = tiny_random(seed=0, sizes=st.TINY_KEY), tiny_random(seed=0)
    assert lm.has_key and not plain_lm.has_key
    prompt = ["a calm piano waltz in D minor at 90 BPM"]
    gen = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False)
    assert gen.key == [key_index("D", "minor")] and gen.bpm == [90.0]
    same = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, key="D minor")
    for stage in ("semantic", "coarse"):
        np.testing.assert_array_equal(gen.tokens[stage], same.tokens[stage])
    other = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, key="A major")
    assert (other.tokens["semantic"] != gen.tokens["semantic"]).any() and other.key == [key_index("A", "major")]
    # The coarse stage reads the key too: the same semantic tokens, another key, other codes.
    mulan = lm._text_tokens(prompt)
    sem = gen.tokens["semantic"][:, 0]
    a = lm.generate_from_tokens(mulan, 0.2, semantic=sem, key="D minor", progress=False)
    b = lm.generate_from_tokens(mulan, 0.2, semantic=sem, key="A major", progress=False)
    assert (a.tokens["coarse"] != b.tokens["coarse"]).any() and a.key == [key_index("D", "minor")]
    sharp = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, guidance_scale=3.0, guide_key=True)
    dull = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, guidance_scale=3.0)
    assert (sharp.tokens["semantic"] != dull.tokens["semantic"]).any() and lm.sampling["guide_key"] is False
    coarse_only = lm.generate_full(prompt, duration_s=0.2, seed=0, progress=False, guidance_scale=3.0,
                                   guide_key=["coarse"])
    np.testing.assert_array_equal(coarse_only.tokens["semantic"], dull.tokens["semantic"])
    assert (coarse_only.tokens["coarse"] != dull.tokens["coarse"]).any()
    with pytest.raises(ValueError, match="guide_key must be"):
        lm.generate_full(prompt, duration_s=0.2, progress=False, guide_key=["fine"])
    assert lm.generate_full(["a calm piano waltz"], duration_s=0.2, progress=False).key == [None]
    with pytest.raises(ValueError, match="no key conditioning"):
        plain_lm.generate_full(prompt, duration_s=0.2, key="C major", progress=False)
    with pytest.raises(ValueError, match="must name a key"):
        lm.generate_full(prompt, duration_s=0.2, key="dorian", progress=False)


def test_infer_reads_a_key_per_line_and_names_bad_ones(tmp_path):
    import json

    from musiclm_jax.batch_decode import run_infer
    from musiclm_jax.pipeline import tiny_random

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "drums in E minor", "id": "a"}\n{"prompt": "drums", "id": "b", "key": "Bb major"}\n'
                       '{"prompt": "drums", "id": "c", "key": "Q major"}\n')
    s = run_infer(tiny_random(seed=0, sizes=st.TINY_KEY), str(prompts), str(tmp_path / "o"), duration_s=0.2,
                  batch_size=2, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert s["done"] == 2 and s["malformed"] == 1
    assert [(r["key"], r["mode"]) for r in rows] == [("E", "minor"), ("Bb", "major")]   # the eval's truth fields
    s = run_infer(tiny_random(seed=0), str(prompts), str(tmp_path / "p"), duration_s=0.2, progress=False)
    assert (s["done"], s["failed"]) == (1, 1) and "no key conditioning" in s["failed_prompts"][0]["error"]


def test_chain_key_sources():
    from musiclm_jax.eval.chain import row_tempo
    from musiclm_jax.eval.data import Item
    from musiclm_jax.pipeline import tiny_random

    lm = tiny_random(seed=0, sizes=st.TINY_KEY)
    refs = [Item(prompt="x in C major at 90 bpm", wave=np.zeros(8), sample_rate=8000,
                 truth={"bpm": 120.0, "key": "A", "mode": "minor"})]
    assert row_tempo(lm, "text", refs, "prompt") == {}
    assert row_tempo(lm, "acoustic", refs, "none", "reference") == {"key": [key_index("A", "minor")]}
    assert row_tempo(lm, "text", refs, "prompt", "none") == {"key": None}
    assert row_tempo(lm, "audio", refs, "reference", "reference") == {"bpm": [120.0], "key": [19]}
    with pytest.raises(ValueError, match="unknown key source"):
        row_tempo(lm, "audio", refs, "prompt", "oracle")


@pytest.mark.parametrize("gin_file,stage,task,length", [
    ("experiments/stage_semantic_quickstart_speed_key.gin", "semantic", "synthcaps_quickstart_speed_key_semantic",
     st.QUICKSTART.mulan_levels + 4),
    ("experiments/stage_coarse_quickstart_key.gin", "coarse", "synthcaps_quickstart_key_coarse",
     st.QUICKSTART.mulan_levels + 50 + 2),
    ("experiments/stage_coarse_quickstart_key_warm.gin", "coarse", "synthcaps_quickstart_key_coarse",
     st.QUICKSTART.mulan_levels + 50 + 2)])
def test_key_experiment_configs_parse(gin_file, stage, task, length):
    import gin

    from musiclm_jax.train import gin_utils

    gin.clear_config()
    try:
        gin_utils.parse_config([gin_file], ["MODEL_DIR = '/tmp/unused'"])
        family = gin.query_parameter("train.family").scoped_configurable_fn()
        layout = st.StageLayout(stage, st.QUICKSTART_KEY)
        assert family.aligned.streams == layout.streams and family.key_prob == 0.1 and family.key_ids == layout.key_ids()
        assert family.config.vocab_size == layout.vocab_size
        assert gin.query_parameter("stage_task_dataset.task") == task
        assert gin.query_parameter("stage_task_dataset.inputs_length") == length
    finally:
        gin.clear_config()


def test_free_prompts_state_tempo_and_key_in_other_wordings_and_are_scored_per_prompt(tmp_path):
    from musiclm_jax.eval import free_prompts
    from musiclm_jax.pipeline import tiny_random

    texts = free_prompts.prompts()
    assert len(set(texts)) == 32 and all(key_from_text(t) is not None for t in texts)
    assert len({t.split()[0] for t in texts}) > 8   # not one template
    row = free_prompts.score(tiny_random(seed=0, sizes=st.TINY_KEY), texts[:2], seconds=0.5)
    for name in ("tempo", "key", "mode"):
        assert 0.0 <= row[name][0] <= 1.0 and len(row["per_prompt"][name]) == 2
    with pytest.raises(ValueError, match="must state a BPM and a key"):
        free_prompts.score(tiny_random(seed=0, sizes=st.TINY_KEY), ["a calm piano piece"], seconds=0.5)
