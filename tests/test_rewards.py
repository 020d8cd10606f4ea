"""Finetuning rewards (`musiclm_jax/finetune/rewards.py`, `musiclm-jax finetune score`): the facts of every SynthCaps
caption template are read back; tempo, key and pulse rewards prefer audio that does what the prompt says; the
diversity reward separates identical from different samples; the CLI scores a folder and names what it skipped."""
import json
import pathlib

import numpy as np
import pytest

from musiclm_jax import cli
from musiclm_jax.data.synthcaps import captions
from musiclm_jax.finetune import rewards as rw

ROOT = pathlib.Path(__file__).resolve().parents[1]
SR = 16000


def test_prompt_facts_reads_every_caption_template():
    rng = np.random.default_rng(0)
    for i in range(60):
        bpm, tonic, mode = float(rng.integers(60, 161)), str(rng.choice(["C", "F#", "Bb", "G#", "Eb"])), \
            str(rng.choice(["major", "minor"]))
        caption = captions.make_caption(rng, "jazz", bpm, tonic, mode, ["piano", "drums"], "calm", "soft")
        assert rw.prompt_facts(caption) == {"bpm": bpm, "tonic": tonic, "mode": mode}, caption
    assert rw.prompt_facts("a calm piano piece") == {}


def test_restate_rewrites_key_bpm_and_the_words_that_follow_from_them():
    from musiclm_jax.data.synthcaps import theory

    rng = np.random.default_rng(1)
    for i in range(60):
        bpm, tonic, mode = float(rng.integers(60, 161)), str(rng.choice(["C", "F#", "Bb", "G#", "Eb"])), \
            str(rng.choice(["major", "minor"]))
        mood = captions.mood_of(mode, bpm)
        caption = captions.make_caption(rng, "jazz", bpm, tonic, mode, ["piano", "drums"], mood, "soft")
        k, new_bpm = int(rng.integers(-5, 6)), float(rng.integers(60, 161))
        out = captions.restate(caption, semitones=k, bpm=new_bpm)
        want = theory.tonic_name(theory.pitch_class(tonic) + k, mode)
        assert rw.prompt_facts(out) == {"bpm": new_bpm, "tonic": want, "mode": mode}, (caption, out)
        # The tempo and mood words are the new facts' (the same synonym slot), the other words untouched.
        words = captions.TEMPO_SYNONYMS[captions.tempo_word(new_bpm)]
        assert any(w in out.lower() for w in words), out
        new_mood = captions.mood_of(mode, new_bpm)
        assert any(w in out.lower() for w in captions.MOOD_WORDS[new_mood]), out
        assert all(w in out.lower() for w in ("jazz", "piano", "drums"))
        other = "minor" if mode == "major" else "major"
        assert rw.prompt_facts(captions.restate(caption, mode=other))["mode"] == other
        assert captions.restate(caption) == caption
    assert captions.restate("a calm piano piece", semitones=2, bpm=90) == "a calm piano piece"


def _clicks(bpm: float, seconds: float = 8.0) -> np.ndarray:
    wave = np.zeros(int(seconds * SR), np.float32)
    for t in np.arange(0, seconds, 60.0 / bpm):
        n = int(t * SR)
        wave[n:n + 400] += np.sin(2 * np.pi * 1000 * np.arange(400) / SR) * np.exp(-np.arange(400) / 80)
    return wave


def _tones(freqs, seconds: float = 8.0) -> np.ndarray:
    """A sequence of plucked notes, one per half second, cycling through `freqs`."""
    n = int(0.5 * SR)
    t = np.arange(n) / SR
    notes = [sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3)) * np.exp(-3 * t) for f in freqs]
    return np.concatenate([notes[i % len(notes)] for i in range(int(seconds / 0.5))]).astype(np.float32) * 0.3


def test_tempo_key_and_pulse_rewards_prefer_what_the_prompt_says():
    assert rw.tempo_score(120, 120) == 1.0 and rw.tempo_score(240, 120) == 1.0  # octaves count
    assert rw.tempo_score(126, 120) > 0.3 and rw.tempo_score(150, 120) < 0.01
    clicks = _clicks(120.0)[None]
    tempo = rw.TempoReward()
    assert tempo(clicks, SR, ["rock at 120 BPM"])[0] > 0.8
    assert tempo(clicks, SR, ["rock at 90 beats per minute"])[0] < 0.2
    assert np.isnan(tempo(clicks, SR, ["rock with no tempo stated"])[0])
    c_major = _tones([261.6, 329.6, 392.0, 523.3, 293.7, 349.2, 440.0, 493.9])[None]
    key = rw.KeyReward()
    right, wrong = key(c_major, SR, ["a piece in C major"])[0], key(c_major, SR, ["a piece in the key of F# major"])[0]
    assert right >= 0.3 and wrong == 0.0, (right, wrong)
    noise = np.random.default_rng(0).normal(0, 0.1, (1, 8 * SR)).astype(np.float32)
    music = (_tones([261.6, 329.6, 392.0]) + 0.5 * _clicks(120.0))[None]
    pulse = rw.PulseReward()
    assert pulse(music, SR, [""])[0] > 2 * pulse(noise, SR, [""])[0]
    with pytest.raises(ValueError, match="prompts"):
        tempo(clicks, SR, ["one", "two"])


def test_diversity_reward_and_weighted_sum():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    d = rw.diversity_reward(np.stack([a, a, a, b, a]), ["p", "p", "q", "q", "alone"])
    np.testing.assert_allclose(d[:4], [-1.0, -1.0, 0.0, 0.0], atol=1e-6)
    assert np.isnan(d[4])
    nan_reward = lambda w, sr, p: np.full(len(w), np.nan, np.float32)  # noqa: E731
    one = lambda w, sr, p: np.ones(len(w), np.float32)  # noqa: E731
    total, parts = rw.weighted({"a": (2.0, one), "b": (5.0, nan_reward)})(np.zeros((3, 10)), SR, ["x"] * 3)
    np.testing.assert_allclose(total, 2.0) and set(parts) == {"a", "b"}


def test_mulan_reward_and_score_cli(tmp_path, capsys):
    import soundfile as sf

    from musiclm_jax.mulan.api import MuLan

    mulan = MuLan.from_checkpoint(str(ROOT / "weights" / "musiclm" / "mulan"))
    waves = np.stack([_clicks(120.0, 4.0), _tones([261.6, 329.6], 4.0)])
    scores = rw.MuLanReward(mulan)(waves, SR, ["drums at 120 BPM", "a calm piano piece"])
    assert scores.shape == (2,) and np.all(np.abs(scores) <= 1.0 + 1e-5)
    rows = []
    for i, (wave, prompt) in enumerate(zip(waves, ["drums at 120 BPM", "a piano piece in C major at 90 BPM"])):
        sf.write(tmp_path / f"g{i}.wav", wave, SR)
        rows.append({"id": f"g{i}", "wav": f"g{i}.wav", "prompt": prompt})
    rows.append({"id": "gone", "wav": "missing.wav", "prompt": "x"})
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = cli.main(["finetune", "score", "--audio_dir", str(tmp_path), "--rewards", "tempo", "key", "mulan",
                        "--mulan_dir", str(ROOT / "weights" / "musiclm" / "mulan")])
    assert summary in (0, None)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["items"] == 2 and "missing.wav" in json.dumps(out["skipped"])  # the missing file is named
    scored = [json.loads(line) for line in (tmp_path / "rewards.jsonl").read_text().splitlines()]
    assert scored[0]["tempo"] > 0.8 and scored[0]["key"] is None and scored[1]["key"] is not None
    assert cli.main(["finetune", "score", "--audio_dir", str(tmp_path), "--rewards", "mulan"]) == 2
    assert "--mulan_dir" in capsys.readouterr().err
