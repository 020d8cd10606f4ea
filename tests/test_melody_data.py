"""Melody renditions (musiclm_jax/data/synthcaps/melody.py): the same line in other sounds keeps its pitches;
a transposed copy moves them; renders are deterministic by seed; bad lines are one-line errors."""
import numpy as np
import pytest

from musiclm_jax.data.synthcaps import melody

SR = 16000
LINE = [(60, 0.0, 0.5), (64, 0.5, 1.0), (67, 1.0, 1.5), (72, 1.5, 2.0)]   # C E G C, half a second each


def _pitch_at(wave, start, end):
    """MIDI pitch (fractional) of the strongest spectral peak in [start, end) s (inner 60 % of the note)."""
    a, b = int((start + 0.2 * (end - start)) * SR), int((end - 0.2 * (end - start)) * SR)
    seg = wave[a:b] * np.hanning(b - a)
    spec = np.abs(np.fft.rfft(seg, 8 * len(seg)))
    freqs = np.fft.rfftfreq(8 * len(seg), 1 / SR)
    band = (freqs > 150) & (freqs < 1200)
    f = freqs[band][np.argmax(spec[band])]
    return 69 + 12 * np.log2(f / 440.0)


def _chroma(wave):
    import librosa
    return librosa.feature.chroma_stft(y=wave, sr=SR, n_fft=4096, hop_length=1024).mean(1)


def test_sine_rendition_plays_the_notes_and_transposition_moves_them():
    rng = np.random.default_rng(0)
    wave = melody.render_melody(LINE, "sine", SR, 2.0, rng)
    assert wave.shape == (2 * SR,) and wave.dtype == np.float32
    for p, s, e in LINE:
        assert abs(_pitch_at(wave, s, e) - p) < 0.5      # detuning is at most 30 cents
    up = melody.render_melody(melody.transpose(LINE, 3), "sine", SR, 2.0, np.random.default_rng(0))
    for p, s, e in LINE:
        assert abs(_pitch_at(up, s, e) - (p + 3)) < 0.5


def test_general_midi_timbres_keep_the_line_apart_from_a_transposed_copy():
    same = melody.render_melody(LINE, "sine", SR, 2.0, np.random.default_rng(1))
    for timbre in ("whistle", "flute", "voice"):
        wave = melody.render_melody(LINE, timbre, SR, 2.0, np.random.default_rng(2))
        moved = melody.render_melody(melody.transpose(LINE, 3), timbre, SR, 2.0, np.random.default_rng(2))
        assert not np.allclose(wave, moved)
        c, m, ref = _chroma(wave), _chroma(moved), _chroma(same)
        cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
        assert cos(c, ref) > cos(m, ref) + 0.1, timbre


def test_triplets_are_deterministic_by_seed():
    other = [(62, 0.0, 1.0), (65, 1.0, 2.0)]
    a = melody.melody_triplet(LINE, SR, 2.0, np.random.default_rng(5), other_notes=other)
    b = melody.melody_triplet(LINE, SR, 2.0, np.random.default_rng(5), other_notes=other)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert all(x.shape == (2 * SR,) for x in a)


def test_bad_lines_are_one_line_errors():
    with pytest.raises(ValueError, match="no notes"):
        melody.render_melody([], "sine", SR, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="start < end"):
        melody.check_notes([(60, 1.0, 0.5)])
    with pytest.raises(ValueError, match="unknown melody timbre"):
        melody.render_melody(LINE, "kazoo", SR, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="lead_notes"):
        melody.notes_of({"audio": np.zeros(4)})
    clip = {"lead_notes": {"pitch": np.array([60, 62]), "start": np.array([0.0, 0.5]), "end": np.array([0.5, 1.0])}}
    assert melody.notes_of(clip) == [(60, 0.0, 0.5), (62, 0.5, 1.0)]


def test_cli_renders_every_timbre_and_skips_clips_without_a_lead_line(tmp_path, monkeypatch, capsys):
    import json

    import musiclm_jax.data.synthcaps.clips as clips_lib
    from musiclm_jax import cli

    lead = {"pitch": np.array([60, 64]), "start": np.array([0.0, 0.5]), "end": np.array([0.5, 1.0])}
    none = {"pitch": np.zeros(0, np.int32), "start": np.zeros(0), "end": np.zeros(0)}
    fake = [{"clip_id": "a", "audio": np.zeros(SR), "sample_rate": SR, "caption": "c", "lead_notes": none},
            {"clip_id": "b", "audio": np.zeros(SR), "sample_rate": SR, "caption": "c", "lead_notes": lead}]
    monkeypatch.setattr(clips_lib, "synthcaps_clips", lambda **kw: fake)
    out = tmp_path / "melody"
    assert cli.main(["data", "melody", "--config", "x", "--data_dir", str(tmp_path), "--out_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rendered 1 lead lines" in printed and "skipped 1: a (no lead line)" in printed
    rows = [json.loads(line) for line in (out / "renditions.jsonl").read_text().splitlines()]
    assert [r["clip_id"] for r in rows] == ["b"] and set(rows[0]["files"]) == set(melody.TIMBRES) | {"transposed"}
    assert len(list(out.glob("b_*.wav"))) == len(melody.TIMBRES) + 1
