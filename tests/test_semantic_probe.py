"""Linear probes (musiclm_jax/eval/semantic_probe.py, `musiclm-jax semantic probe`): planted labels are found by MFCC
and w2v-BERT features, labels come from SynthCaps fields, splits are stratified and grouped, the CLI writes the
table, and bad input fails with one clear line."""
import argparse
import json

import numpy as np
import pytest

from musiclm_jax.semantic import commands
from musiclm_jax.eval import semantic_probe as pr
from musiclm_jax.semantic import w2v_bert as wb

SR = 16000
TINY = wb.preset("tiny", num_contrastive_layers=1, num_mlm_layers=1)
PITCHES = {"low": 220.0, "mid": 440.0, "high": 880.0}


def planted_clips(n, seed=0, seconds=1.0):
    """Tones whose pitch is the class ("genre"); loudness, detune and noise vary. Two clips per score."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    names = sorted(PITCHES)
    clips = []
    for i in range(n):
        cls = names[(i // 2) % 3]
        f0 = PITCHES[cls] * rng.uniform(0.97, 1.03)
        w = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 6)) + 0.01 * rng.standard_normal(len(t))
        clips.append({"audio": w.astype(np.float32), "genre": cls, "score_id": f"s{i // 2}",
                      "bpm": 70.0 if i % 4 < 2 else 140.0, "key": "C#" if i % 2 else "Db", "mode": "major",
                      "lead_instrument": "piano"})
    return clips


def test_labels_from_synthcaps_fields():
    assert [pr.tempo_bucket(b) for b in (60, 89.9, 90, 130, 130.5, 160)] == \
        ["slow", "slow", "medium", "medium", "fast", "fast"]
    assert pr.tempo_bucket(None) is None and pr.tempo_bucket(0) is None
    clip = {"genre": "rock", "bpm": np.float32(120), "key": "Db", "mode": "major", "lead_instrument": "flute"}
    got = {a: pr.labels([clip], a)[0] for a in pr.ATTRIBUTES}
    assert got == {"genre": "rock", "tempo": "medium", "tonic": "C#", "key": "C# major", "mode": "major",
                   "instrument": "flute"}
    assert pr.labels([{"key": "C#"}, {"key": "Db"}], "tonic") == ["C#", "C#"]  # enharmonics merged
    assert pr.labels([{}], "genre") == [None] and pr.labels([{"key": "H"}], "tonic") == [None]
    assert pr.labels([{"instrument": "oboe"}], "instrument") == ["oboe"]
    with pytest.raises(ValueError, match="unknown probe attribute"):
        pr.labels([clip], "colour")


def test_stratified_group_split():
    lab = ["a"] * 8 + ["b"] * 8
    groups = [i // 2 for i in range(16)]
    tr, te = pr.stratified_group_split(lab, groups, 0.25, seed=0)
    assert sorted(tr + te) == list(range(16)) and len(te) == 4
    assert {lab[i] for i in te} == {"a", "b"}  # stratified
    assert not {groups[i] for i in tr} & {groups[i] for i in te}  # grouped
    assert (tr, te) == pr.stratified_group_split(lab, groups, 0.25, seed=0)  # deterministic


def test_planted_label_is_found():
    clips = planted_clips(48)
    rand = pr.random_init_tokenizer(TINY, seed=0, chunk_frames=25)  # 1 s clips: little padding
    extractors = pr.w2v_bert_extractors(rand, "random-init", kmeans_fit_waves=[c["audio"] for c in clips[:36]],
                                        num_clusters=8, num_steps=10) + [pr.mfcc_extractor()]
    assert [e.name for e in extractors] == ["random-init features", "random-init token histogram", "MFCC"]
    rows = pr.probe_table(clips[:36], clips[36:], extractors, ["genre"])
    by = {r["features"]: r for r in rows}
    assert by["chance (majority class)"]["genre"] <= 0.5
    assert by["MFCC"]["genre"] >= 0.9 and by["MFCC"]["dim"] == 2 * pr.NUM_MFCC
    assert by["random-init features"]["genre"] >= 0.9 and by["random-init features"]["dim"] == 2 * TINY.embed_dim
    assert by["random-init token histogram"]["genre"] > 0.5 and by["random-init token histogram"]["dim"] == 8
    rows = pr.probe_table_random(clips, extractors, ["genre", "tempo"], seed=1)
    by = {r["features"]: r for r in rows}
    assert by["MFCC"]["genre"] >= 0.9 and by["random-init features"]["genre"] >= 0.9
    table = pr.markdown_table(rows, ["genre", "tempo"])
    assert table.splitlines()[0] == "| features | dim | genre | tempo |" and "| MFCC | 40 |" in table


def test_bad_input_errors():
    clips = planted_clips(8)
    mfcc = [pr.mfcc_extractor()]
    with pytest.raises(ValueError, match="no clip has a 'genre' label") as e:
        pr.probe_table([{"audio": c["audio"]} for c in clips], clips, mfcc, ["genre"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="one class .'piano'. in the training clips") as e:
        pr.probe_table(clips, clips, mfcc, ["instrument"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no test clips"):
        pr.probe_table(clips, [], mfcc, ["genre"])


@pytest.fixture(scope="module")
def tokenizer():
    """A w2v-BERT tokenizer with an 8-cluster k-means. Built from random parameters rather than a 1-step training
    run, which would double this file's time (checkpoint restore is covered by tests/test_semantic_api.py)."""
    from musiclm_jax.quantization.kmeans import KMeansConfig, fit

    tok = pr.random_init_tokenizer(TINY, seed=7, chunk_frames=25)
    feats = np.concatenate([tok.features(c["audio"], SR)[0] for c in planted_clips(6)])
    tok.kmeans = fit(feats, KMeansConfig(num_clusters=8, batch_size=64, num_steps=5, init_samples=len(feats)))
    return tok


def test_cli(tokenizer, tmp_path, monkeypatch, capsys):
    import musiclm_jax.data.synthcaps.clips as clips_lib
    from musiclm_jax.semantic.api import SemanticTokenizer

    model_dir = str(tmp_path / "model")
    monkeypatch.setattr(SemanticTokenizer, "from_checkpoint", classmethod(lambda cls, d, **kw: tokenizer))

    splits = {"train": planted_clips(36, seed=0), "test": planted_clips(12, seed=1)}
    for clips in splits.values():
        for c in clips:
            c["sample_rate"] = SR
    monkeypatch.setattr(clips_lib, "synthcaps_clips", lambda split, **kw: splits[split])
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="cmd"))
    base = ["semantic", "probe", "--model_dir", model_dir, "--synthcaps", "fake", "--attributes", "genre,tempo"]
    for mode in ("heldout", "random"):
        out = tmp_path / f"probe_{mode}.json"
        args = parser.parse_args(base + ["--split_mode", mode, "--out", str(out)])
        res = args.func(args)
        saved = json.load(open(out))
        assert saved["rows"] == res["rows"] and saved["split_mode"] == mode
        names = [r["features"] for r in saved["rows"]]
        assert names == ["trained features", "trained token histogram", "random-init features",
                         "random-init token histogram", "MFCC", "chance (majority class)"]
        assert {r["features"]: r["genre"] for r in saved["rows"]}["MFCC"] >= 0.9
        printed = capsys.readouterr().out
        assert "| trained token histogram | 8 |" in printed and saved["markdown"] in printed
    args = parser.parse_args(base + ["--split_mode", "random", "--frames", "--no_random_init",
                                     "--out", str(tmp_path / "frames.json")])
    saved = args.func(args)
    assert [r["tokens"] for r in saved["frame_rows"]] == ["trained tokens", "log-mel k-means", "chance"]
    assert all(0 <= r["pitch_class"] <= 1 and 0 <= r["onset_auc"] <= 1 for r in saved["frame_rows"])
    assert saved["frame_markdown"] in capsys.readouterr().out
    # A corpus without labels, and bad options: one clear line each.
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    import soundfile as sf
    sf.write(str(audio_dir / "a.wav"), splits["train"][0]["audio"], SR)
    sf.write(str(audio_dir / "b.wav"), splits["train"][2]["audio"], SR)
    for extra, msg in ((["--audio_dir", str(audio_dir), "--split_mode", "random"], "no clip has a 'genre' label"),
                       (["--audio_dir", str(audio_dir)], "heldout needs --synthcaps"),
                       (["--synthcaps", "fake", "--attributes", "colour"], "unknown --attributes")):
        argv = ["semantic", "probe", "--model_dir", model_dir, "--out", str(tmp_path / "x.json")] + extra
        args = parser.parse_args(argv)
        with pytest.raises(ValueError, match=msg) as e:
            args.func(args)
        assert "\n" not in str(e.value)


def melody_clips(n, seed=0, seconds=2.0, note_s=0.2):
    """Plucked tones of random pitch class (C4-B4), a new note every `note_s`: pitch and onsets change per frame."""
    rng = np.random.default_rng(seed)
    per_note = int(note_s * SR)
    t = np.arange(per_note) / SR
    out = []
    for _ in range(n):
        notes = [np.exp(-t / 0.08) * np.sin(2 * np.pi * 261.63 * 2 ** (rng.integers(12) / 12) * t)
                 for _ in range(int(seconds / note_s))]
        out.append((0.3 * np.concatenate(notes) + 0.003 * rng.standard_normal(len(notes) * per_note))
                   .astype(np.float32))
    return out


def test_roc_auc_and_chroma_frames():
    from musiclm_jax.audio.features import chroma_frames

    assert pr.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert pr.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert pr.roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    assert np.isnan(pr.roc_auc(np.ones(3), np.zeros(3)))
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(SR) / SR).astype(np.float32)
    c = chroma_frames(tone, SR, hop_length=640, frames=25)
    assert c.shape == (25, 12) and np.all(c[2:-2].argmax(1) == 9)        # A
    np.testing.assert_allclose(np.linalg.norm(c[2:-2], axis=1), 1.0, rtol=1e-5)
    silent = chroma_frames(np.zeros(SR, np.float32), SR, hop_length=640, frames=30)
    assert silent.shape == (30, 12) and np.all(silent == 0)


def test_frame_probe_reads_pitch_and_onsets(tokenizer):
    """Chroma-augmented tokens name each frame's pitch class far above chance; log-mel tokens find the onsets."""
    from musiclm_jax.quantization.kmeans import KMeansConfig, fit
    from musiclm_jax.semantic.api import SemanticTokenizer

    train, test = melody_clips(10, seed=0), melody_clips(4, seed=1)
    tables = {}
    for weight in (0.0, 3.0):  # measured: pitch class 0.40 without chroma, 0.86 with; chance 0.07
        tok = SemanticTokenizer(tokenizer.model, None, "t", chunk_frames=25, chroma_weight=weight)
        feats = np.concatenate([tok.token_features(w, SR)[0] for w in train])
        assert feats.shape[1] == TINY.embed_dim + (12 if weight else 0)
        tok.kmeans = fit(feats, KMeansConfig(num_clusters=24, batch_size=256, num_steps=30, init_samples=len(feats)))
        tables[weight] = {r["tokens"]: r for r in pr.frame_probe_table(train, test, tok, SR)}
    rows = tables[3.0]
    assert set(rows) == {"trained tokens", "log-mel k-means", "chance"}
    chance = rows["chance"]["pitch_class"]
    assert rows["trained tokens"]["pitch_class"] > max(0.6, chance + 0.4), rows
    assert rows["trained tokens"]["pitch_class"] > tables[0.0]["trained tokens"]["pitch_class"] + 0.2, tables
    assert rows["log-mel k-means"]["onset_auc"] > 0.8, rows
    with pytest.raises(ValueError, match="fit the k-means first"):
        pr.frame_probe_table(train, test, SemanticTokenizer(tokenizer.model, None, "t"), SR)
    with pytest.raises(ValueError, match="chroma_weight must be"):
        SemanticTokenizer(tokenizer.model, None, "t", chroma_weight=-1.0)
