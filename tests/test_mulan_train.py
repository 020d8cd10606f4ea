"""MuLan trains on tiny SynthCaps with the shared trainer: recall rises above chance; checkpoint, quantizer and CLI."""
import argparse
import functools
import json

import jax
import numpy as np
import pytest

from musiclm_jax.mulan import evaluate
from musiclm_jax.mulan.api import MuLan
from musiclm_jax.mulan.audio import AudioConfig
from musiclm_jax.data.synthcaps.clips import render_clips
from musiclm_jax.mulan.data import PairBatches, mulan_dataset
from musiclm_jax.mulan.family import MuLanFamily
from musiclm_jax.mulan.model import MuLanConfig
from musiclm_jax.mulan.run import train_mulan
from musiclm_jax.mulan.text import TextTokenizer, minilm_config
from musiclm_jax.train import partitioning

AUDIO = AudioConfig(window_seconds=2.0, n_fft=512, hop_length=320, n_mels=32, stage_sizes=(1, 1), width=16,
                    block="basic")
CONFIG = MuLanConfig(audio=AUDIO, text=minilm_config(max_length=64), embed_dim=32, freeze_text_tower=True,
                     rvq_levels=4, rvq_codebook_size=8)


@pytest.fixture(scope="module")
def clips():
    # 8 scores x 2 soundfonts of 3 s: every split, so retrieval has 16 candidates (chance R@5 = 5/16).
    out = render_clips(num_scores=8, clip_seconds=3.0)
    assert len(out) >= 14
    return out


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("mulan"))
    family = MuLanFamily(CONFIG, learning_rate=3e-3, warmup_steps=0)
    clips_fn = lambda split: clips  # noqa: E731
    dataset = functools.partial(mulan_dataset, clips_fn=clips_fn, audio_cfg=CONFIG.audio,
                                max_length=CONFIG.text.max_length)
    summary = train_mulan(clips_fn=clips_fn, family=family, model_dir=model_dir, dataset=dataset, batch_size=16,
                          num_steps=30, mesh_fn=lambda: partitioning.make_mesh(devices=jax.devices()[:1]),
                          progress=False, log_period=10, async_checkpoints=False, checkpoint_period=30)
    return model_dir, summary


@pytest.fixture(scope="module")
def loaded(trained):
    return MuLan.from_checkpoint(trained[0])


def test_pair_batches_are_resumable_and_padded(clips):
    short = [dict(clips[0], audio=clips[0]["audio"][:16000])]  # 1 s clip, 2 s window
    data = PairBatches(clips + short, AUDIO, TextTokenizer(64), batch_size=4, seed=3)
    first = [next(data) for _ in range(5)]
    assert first[0]["audio"].shape == (4, AUDIO.window_samples) and first[0]["ids"].dtype == np.int32
    data.set_state({"index": 3})
    np.testing.assert_array_equal(next(data)["audio"], first[3]["audio"])
    one = PairBatches(short, AUDIO, TextTokenizer(64), batch_size=1)
    assert np.all(next(one)["audio"][0, 16000:] == 0)


def test_transposed_twins_are_the_same_clip_higher_and_faster_with_the_caption_restated():
    from musiclm_jax.finetune.rewards import prompt_facts
    from musiclm_jax.data.synthcaps import theory

    sr, seconds = 16000, 3.0
    t = np.arange(int(sr * seconds)) / sr
    tone = {"audio": (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), "sample_rate": sr,
            "caption": "A calm folk song in the key of A major at 100 BPM (moderate tempo)."}
    data = PairBatches([tone] * 4, AUDIO, TextTokenizer(64), batch_size=4, seed=0, twins=0.5, max_semitones=3)

    def semitones(wave):
        ratio = np.argmax(np.abs(np.fft.rfft(wave))) * sr / AUDIO.window_samples / 440.0
        k = int(round(12 * np.log2(ratio)))
        assert abs(ratio - 2 ** (k / 12)) < 0.01
        return k

    for _ in range(3):
        batch = next(data)
        assert [semitones(w) for w in batch["audio"][:2]] == [0, 0]
        assert all(1 <= abs(semitones(w)) <= 3 for w in batch["audio"][2:])   # the twins
        assert np.all(batch["audio"][:, -100:].std(-1) > 0)   # the sped-up windows are full length
    seen = set()
    for seed in range(12):
        wave, caption = data.twin(0, np.random.default_rng(seed))
        k = semitones(wave)
        facts = prompt_facts(caption)
        assert facts["tonic"] == theory.tonic_name(9 + k, "major") and facts["mode"] == "major"
        assert facts["bpm"] == round(100 * 2 ** (k / 12)) and wave.shape == (AUDIO.window_samples,)
        seen.add(k)
    assert len(seen) >= 4 and 0 not in seen
    assert PairBatches([tone] * 4, AUDIO, TextTokenizer(64), batch_size=4, train=False, twins=0.5).num_twins == 0
    with pytest.raises(ValueError, match="twins must be in"):
        PairBatches([tone], AUDIO, TextTokenizer(64), batch_size=4, twins=0.8)


def test_training_raises_recall_above_chance(clips, trained, loaded):
    model_dir, summary = trained
    assert summary["step"] == 30 and summary["skipped_steps"] == 0
    after = evaluate.evaluate_mulan(loaded, clips)
    chance = after["chance"]["r@5"]
    assert chance == pytest.approx(5 / len(clips))
    assert after["text_to_audio"]["r@5"] >= chance + 0.3, after
    assert after["audio_to_text"]["r@5"] >= chance + 0.3, after
    # The checkpoint is the trained model, not the initial one: training metrics moved too.
    assert summary["last_metrics"]["batch_t2a_r1"] > 0.5
    assert set(after["zero_shot"]) == {"genre", "instrument", "tempo", "key", "mode"}
    assert set(after["swap"]) == set(after["swap_tokens"]) == {"tempo", "key", "mode"}
    for name in ("swap", "swap_tokens"):
        for v in after[name].values():
            assert v["num"] == len(clips) and v["interval"][0] <= v["accuracy"] <= v["interval"][1]


def test_quantizer_fitted_and_tokens_from_both_modalities(clips, trained, loaded):
    model_dir, summary = trained
    report = json.load(open(f"{model_dir}/quantizer_report.json"))
    assert 0.0 <= report["audio"]["cosine_lost"] < 0.5 and len(report["text"]["cosine_by_levels"]) == 4
    assert summary["quantizer"]["audio"]["cosine_lost"] == report["audio"]["cosine_lost"]
    mulan = loaded
    tokens = mulan.tokens_from_text([clips[0]["caption"], clips[1]["caption"]])
    assert tokens.shape == (2, 4) and tokens.max() < 8
    audio_tokens = mulan.tokens_from_audio(clips[0]["audio"], clips[0]["sample_rate"])
    assert audio_tokens.shape == (4,) and audio_tokens.dtype == np.int32


def test_quantizer_refit_on_audio_and_text_covers_the_text_embeddings(clips, trained, tmp_path):
    import shutil

    from musiclm_jax.mulan import commands
    from musiclm_jax.mulan.run import fit_and_save_quantizer

    model_dir = str(tmp_path / "mulan")
    shutil.copytree(trained[0], model_dir)
    audio_fit = json.load(open(f"{model_dir}/quantizer_report.json"))
    joint = fit_and_save_quantizer(model_dir, clips, fit_on="audio+text")
    assert joint["fit_on"] == "audio+text" and json.load(open(f"{model_dir}/quantizer_report.json")) == joint
    # The codebooks now also cover where the captions lie: their tokens lose less of them.
    assert joint["text"]["cosine_lost"] < audio_fit["text"]["cosine_lost"], (joint, audio_fit)
    tokens = MuLan.from_checkpoint(model_dir).tokens_from_text([clips[0]["caption"]])
    assert tokens.shape == (1, 4)
    with pytest.raises(ValueError, match="unknown quantizer fit"):
        fit_and_save_quantizer(model_dir, clips, fit_on="text")
    with pytest.raises(ValueError, match="does not exist"):
        commands.fit_quantizer(argparse.Namespace(model_dir=str(tmp_path / "nope"), synthcaps="tiny", data_dir=None,
                                                  fit_on="audio", seed=0))


def test_cli_embed_and_missing_model_dir(trained, tmp_path, capsys):
    from musiclm_jax.mulan import commands

    model_dir, _ = trained
    out = commands.embed(argparse.Namespace(model_dir=model_dir, text=["a calm piano piece"], audio=[], tokens=True,
                                            out=str(tmp_path / "e.json")))
    assert len(out["text"][0]["embedding"]) == 32 and len(out["text"][0]["tokens"]) == 4
    assert "tokens" in capsys.readouterr().out
    with pytest.raises(ValueError, match="does not exist"):
        MuLan.from_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="nothing to embed"):
        commands.embed(argparse.Namespace(model_dir=model_dir, text=[], audio=[], tokens=False, out=None))


def test_export_leaves_out_the_frozen_text_tower_and_loads_back(clips, trained, loaded, tmp_path):
    import os

    from musiclm_jax.export import MULAN_TEXT_TOWER
    from musiclm_jax.train.checkpoints import export_inference

    model_dir, _ = trained
    report = export_inference(model_dir, str(tmp_path / "mulan"), drop=[MULAN_TEXT_TOWER])
    source = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(f"{model_dir}/checkpoints") for f in fs)
    assert report["bytes"] < source / 10  # MiniLM (22M parameters) stays in its package
    exported = MuLan.from_checkpoint(str(tmp_path / "mulan"))
    text = [clips[0]["caption"], "a calm piano piece"]
    np.testing.assert_allclose(exported.embed_text(text), loaded.embed_text(text), atol=1e-5)
    np.testing.assert_allclose(exported.embed_audio(clips[1]["audio"], clips[1]["sample_rate"]),
                               loaded.embed_audio(clips[1]["audio"], clips[1]["sample_rate"]), atol=1e-5)
    np.testing.assert_array_equal(exported.tokens_from_text(text), loaded.tokens_from_text(text))
