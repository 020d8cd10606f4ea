"""MusicLM end to end on tiny random parts: durations, determinism, stage token ranges, guidance, continuation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax import pipeline
from musiclm_jax.lm import decoding
from musiclm_jax.lm import stages as st

PROMPTS = ["a calm piano waltz", "loud rock drums"]


@pytest.fixture(scope="module")
def lm():
    return pipeline.tiny_random(0)


def test_end_to_end_duration_rate_finite_and_reproducible(lm):
    # 0.3 s is longer than every tiny crop (0.2 / 0.1 / 0.05 s): all three stages decode in sliding windows.
    a = lm.generate_full(PROMPTS, 0.3, seed=3, progress=False)
    assert a.sample_rate == lm.sample_rate == 8000
    assert a.waves.shape == (2, 2400) and a.waves.dtype == np.float32 and np.isfinite(a.waves).all()
    assert a.tokens["semantic"].shape == (2, 1, 30) and a.tokens["coarse"].shape == (2, 1, 60, 2)
    assert a.tokens["fine"].shape == (2, 1, 60, 2)
    b = lm.generate(PROMPTS, 0.3, seed=3, progress=False)
    np.testing.assert_array_equal(a.waves, b)
    c = lm.generate_full(PROMPTS, 0.3, seed=4, progress=False)
    assert not np.array_equal(a.tokens["semantic"], c.tokens["semantic"])
    assert set(a.timings) == {"semantic", "coarse", "fine", "codec"}


def test_per_prompt_seeds_decode_each_prompt_as_if_alone(lm):
    both = lm.generate_full(PROMPTS, 0.3, seed=[3, 4], progress=False)
    for row, seed in enumerate((3, 4)):
        alone = lm.generate_full(PROMPTS[row:row + 1], 0.3, seed=seed, progress=False)  # an int seed, one prompt
        for stage in st.STAGES:
            np.testing.assert_array_equal(both.tokens[stage][row], alone.tokens[stage][0])
        np.testing.assert_allclose(both.waves[row], alone.waves[0], atol=1e-5)
    # with num_samples, each sample has its own key from its prompt's seed; MuLan reranking stays per prompt
    pair = lm.generate_full(PROMPTS, 0.3, seed=[4, 3], num_samples=2, progress=False)
    one = lm.generate_full(PROMPTS[1:], 0.3, seed=[3], num_samples=2, progress=False)
    for stage in st.STAGES:
        np.testing.assert_array_equal(pair.tokens[stage][1], one.tokens[stage][0])
    np.testing.assert_allclose(pair.scores[1], one.scores[0], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(one.tokens["semantic"][0, 0], one.tokens["semantic"][0, 1])
    with pytest.raises(ValueError, match="one int per prompt"):
        lm.generate(PROMPTS, 0.3, seed=[3], progress=False)


@pytest.mark.parametrize("stage", st.STAGES)
def test_stage_decode_respects_token_ranges(lm, stage):
    layout, model = lm.layouts[stage], lm.models[stage]
    rng = np.random.default_rng(0)
    m = rng.integers(0, st.TINY.mulan_codes, (2, st.TINY.mulan_levels))
    s = rng.integers(0, st.TINY.semantic_codes, (2, 4))
    a = rng.integers(0, st.TINY.codec_codes, (2, 4, st.TINY.codec_levels))
    inputs, targets = layout.build(mulan=m, semantic=s, acoustic=a)
    k = layout.tokens_per_frame
    for phase in range(k):  # a prompt that already holds `phase` target tokens (continuation mid-frame)
        prompt = np.concatenate([inputs, targets[:, :phase]], axis=1)
        ids, _ = decoding.sample(model, jnp.asarray(prompt), max_new_tokens=6 * k, rng=jax.random.key(phase),
                                 logit_mask_fn=layout.logit_mask(phase), prefix_len=inputs.shape[1], temperature=3.0)
        full = np.concatenate([targets[:, :phase], np.asarray(ids)], axis=1)
        codes = layout.targets_to_codes(full[:, :full.shape[1] // k * k])  # raises on an id outside its codebook
        assert codes.shape[:2] == (2, (phase + 6 * k) // k)
    if stage != "coarse":
        return
    # without the mask, a random LM does put ids in foreign ranges (so the check above can fail)
    ids, _ = decoding.sample(model, jnp.asarray(inputs), max_new_tokens=6 * k, rng=jax.random.key(0),
                             prefix_len=inputs.shape[1], temperature=3.0)
    with pytest.raises(ValueError, match="outside"):
        layout.targets_to_codes(np.asarray(ids))


def test_guidance_scale_one_equals_unguided_and_guidance_changes_samples(lm):
    layout, model = lm.layouts["coarse"], lm.models["coarse"]
    rng = np.random.default_rng(1)
    inputs = layout.build_inputs(mulan=rng.integers(0, st.TINY.mulan_codes, (2, st.TINY.mulan_levels)),
                                 semantic=rng.integers(0, st.TINY.semantic_codes, (2, 5)))
    kw = dict(max_new_tokens=8, rng=jax.random.key(5), logit_mask_fn=layout.logit_mask(), prefix_len=inputs.shape[1])
    plain, _ = decoding.sample(model, jnp.asarray(inputs), **kw)
    guided1, _ = decoding.sample(model, jnp.asarray(inputs), uncond_prompts=jnp.asarray(layout.uncond_inputs(inputs)),
                                 guidance_scale=1.0, **kw)
    np.testing.assert_array_equal(plain, guided1)
    # (same shapes as the end-to-end test: compiled programs are reused)
    a = lm.generate_full(PROMPTS, 0.3, seed=3, guidance_scale=1.0, progress=False)
    b = lm.generate_full(PROMPTS, 0.3, seed=3, guidance_scale=4.0, progress=False)
    assert np.isfinite(b.waves).all() and b.waves.shape == a.waves.shape
    assert not np.array_equal(a.tokens["semantic"], b.tokens["semantic"])
    np.testing.assert_array_equal(b.waves, lm.generate(PROMPTS, 0.3, seed=3, guidance_scale=4.0, progress=False))


def test_continuation_keeps_the_given_prefix(lm):
    known = np.random.default_rng(2).integers(0, st.TINY.semantic_codes, (2, 13))
    mulan = np.random.default_rng(3).integers(0, st.TINY.mulan_codes, (2, st.TINY.mulan_levels))
    out = lm._decode_stage("semantic", 30, lm.semantic_rate, lm.windows.semantic_s,
                           lambda a, b, done: {"mulan": mulan}, known, jax.random.key(0), 1.0, 1.0,
                           top_k=0, top_p=1.0, progress=False, boundaries=())
    assert out.shape == (2, 30)
    np.testing.assert_array_equal(out[:, :13], known)
    coarse = np.random.default_rng(4).integers(0, st.TINY.codec_codes, (2, 7, st.TINY.coarse_levels))
    sem = out
    out = lm._decode_stage("coarse", 25, lm.acoustic_rate, lm.windows.coarse_s,
                           lambda a, b, done: {"mulan": mulan, "semantic": sem[:, a // 2:b // 2]}, coarse,
                           jax.random.key(1), 1.0, 1.0, top_k=0, top_p=1.0, progress=False, boundaries=())
    assert out.shape == (2, 25, 2)
    np.testing.assert_array_equal(out[:, :7], coarse)


def test_num_samples_reranked_by_mulan_score_and_story(lm):
    g = lm.generate_full(PROMPTS[:1], 0.3, num_samples=2, seed=0, progress=False)  # 2 rows, as above
    assert g.all_waves.shape == (1, 2, 2400) and g.scores.shape == (1, 2)
    assert (np.diff(g.scores[0]) <= 0).all()  # best first
    np.testing.assert_array_equal(g.waves[0], g.all_waves[0, 0])
    want = lm.mulan_scores(PROMPTS[:1] * 2, g.all_waves[0])
    np.testing.assert_allclose(g.scores[0], want, rtol=1e-5, atol=1e-6)
    story = lm.generate_story([(PROMPTS[0], 0.1), (PROMPTS[1], 0.2)], seed=0, num_samples=2, progress=False)
    assert story.shape == (1, 2400) and np.isfinite(story).all()


def test_bad_arguments(lm):
    with pytest.raises(ValueError, match="duration_s"):
        lm.generate(PROMPTS, 0, progress=False)
    with pytest.raises(ValueError, match="prompts"):
        lm.generate("a single string", 0.1, progress=False)
    with pytest.raises(ValueError, match="temperatures"):
        lm.generate(PROMPTS, 0.1, temperatures=(1.0,), progress=False)
    with pytest.raises(ValueError, match="story"):
        lm.generate_story([])
    with pytest.raises(ValueError, match="semantic tokenizer"):
        lm.generate_continuation(PROMPTS, np.zeros(800, np.float32), 8000, 0.3)
    with pytest.raises(ValueError, match="musiclm.json"):
        pipeline.MusicLM.from_pretrained("/nonexistent/musiclm")


def test_generate_cli_writes_wav_and_png(lm, tmp_path, monkeypatch, capsys):
    import argparse

    import soundfile as sf

    from musiclm_jax.cli import generate as generate_commands

    monkeypatch.setattr(pipeline, "tiny_random", lambda seed=0: lm)  # reuse the module's parts (built once)
    parser = argparse.ArgumentParser()
    generate_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--duration", "0.3",
                              "--out_dir", str(tmp_path), "--random_init", "--tiny", "--no_progress"])
    summary = args.func(args)  # 2 prompts x 0.3 s: the shapes of the end-to-end test, no new compiles
    assert "untrained noise" in capsys.readouterr().out
    wave, rate = sf.read(tmp_path / "001.wav")
    assert rate == 8000 and wave.shape == (2400,) and (tmp_path / "001.png").exists()
    assert summary["untrained"] and summary["outputs"][0]["seconds"] == 0.3
    from musiclm_jax import resources

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(resources, "SHIPPED_MUSICLM", tmp_path / "no-weights")  # an install without weights
    for bad, match in ((["--random_init"], "--tiny"), ([], "no shipped weights.*--model_dir"),
                       (["--prompt", "b", "--random_init", "--tiny"], "--out_dir")):
        args = parser.parse_args(["generate", "--prompt", "a", "--duration", "0.1", *bad])
        with pytest.raises(ValueError, match=match):
            args.func(args)


def test_generate_checks_the_request_before_loading_the_model(tmp_path, monkeypatch):
    import argparse

    from musiclm_jax.cli import generate as generate_commands

    def no_load(args):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(generate_commands, "load_model", no_load)
    parser = argparse.ArgumentParser()
    generate_commands.register(parser.add_subparsers(dest="command"))
    (tmp_path / "dir").mkdir()
    cases = [(["--out", str(tmp_path / "dir")], "is a directory: pass a file name ending in .wav"),
             (["--out", str(tmp_path / "song")], "does not end in .wav"),
             (["--duration", "1e9"], r"over the limit of 600 s.*--max_duration"),
             (["--duration", "0"], "must be a number of seconds > 0"),
             (["--prompt", "caf\udce9"], "is not UTF-8 text"),
             (["--prompt", "  "], "is empty"),
             (["--top_p", "0"], "0 < --top_p <= 1"),
             (["--coarse_guidance_scale", "-1"], "--coarse_guidance_scale >= 0")]
    for extra, match in cases:
        argv = ["generate", "--duration", "1", "--out", str(tmp_path / "a.wav"), *extra]
        if "--prompt" not in extra:
            argv += ["--prompt", "a calm piano waltz"]
        args = parser.parse_args(argv)
        with pytest.raises(ValueError, match=match):
            args.func(args)
    # --max_duration lifts the limit: this request passes every check and reaches the model
    args = parser.parse_args(["generate", "--prompt", "a", "--duration", "1e4", "--max_duration", "1e5",
                              "--out", str(tmp_path / "long.wav")])
    with pytest.raises(AssertionError, match="was loaded"):
        args.func(args)


def test_sampling_defaults_are_the_models_own(lm):
    import argparse

    from musiclm_jax.cli import generate as generate_commands

    assert lm.sampling == pipeline.SAMPLING_DEFAULTS
    parser = argparse.ArgumentParser()
    generate_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "--prompt", "a", "--top_k", "5"])
    model = argparse.Namespace(sampling={**pipeline.SAMPLING_DEFAULTS, "guidance_scale": 3.0})
    assert generate_commands.sampling_kwargs(args, model) == {
        "temperatures": (1.0, 0.95, 0.4), "top_k": 5, "top_p": 1.0, "guidance_scale": 3.0, "guide_tempo": False,
        "guide_key": False, "guide_melody": False, "coarse_guidance_scale": None, "num_samples": 1}
    assert generate_commands.sampling_kwargs(args) == {"top_k": 5, "num_samples": 1}
    with pytest.raises(ValueError, match="unknown sampling setting"):
        pipeline.MusicLM(mulan=lm.mulan, codec=lm.codec, semantic_lm=lm.models["semantic"],
                         coarse_lm=lm.models["coarse"], fine_lm=lm.models["fine"], sizes=lm.sizes,
                         semantic_rate=lm.semantic_rate, sampling={"guidance": 3})


def test_coarse_guidance_scale_sets_the_coarse_stage_only_while_guidance_is_on(lm, monkeypatch):
    scales = {}
    original = pipeline.MusicLM._decode_stage

    def spy(self, stage, *args, **kwargs):
        scales[stage] = args[7]  # guidance_scale
        return original(self, stage, *args, **kwargs)

    monkeypatch.setattr(pipeline.MusicLM, "_decode_stage", spy)
    lm.generate(["a calm piano waltz"], 0.3, progress=False, guidance_scale=3.0, coarse_guidance_scale=1.5)
    assert scales == {"semantic": 3.0, "coarse": 1.5, "fine": 1.0}
    lm.generate(["a calm piano waltz"], 0.3, progress=False, guidance_scale=1.0, coarse_guidance_scale=1.5)
    assert scales == {"semantic": 1.0, "coarse": 1.0, "fine": 1.0}   # unguided rows stay unguided
    monkeypatch.setitem(lm.sampling, "coarse_guidance_scale", 2.0)    # musiclm.json's own, unless told otherwise
    lm.generate(["a calm piano waltz"], 0.3, progress=False, guidance_scale=3.0)
    assert scales == {"semantic": 3.0, "coarse": 2.0, "fine": 1.0}
    monkeypatch.setitem(lm.sampling, "coarse_guidance_scale", None)
    lm.generate(["a calm piano waltz"], 0.3, progress=False, guidance_scale=3.0)
    assert scales == {"semantic": 3.0, "coarse": 3.0, "fine": 1.0}
