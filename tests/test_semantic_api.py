"""Semantic tokenizer end to end: train (2 steps) -> fit k-means -> tokens; determinism, chunk invariance,
bad input, provenance; the CLI wiring."""
import argparse
import json
import os

import jax
import numpy as np
import pytest

from musiclm_jax.codec.data import synthetic_tones, tone_clip
from musiclm_jax.semantic import commands, evaluate
from musiclm_jax.semantic import w2v_bert as wb
from musiclm_jax.semantic.api import SemanticTokenizer
from musiclm_jax.semantic.family import W2vBertFamily
from musiclm_jax.quantization.kmeans import KMeans
from musiclm_jax.semantic.run import fit_kmeans
from musiclm_jax.train.trainer import train
from musiclm_jax.train.partitioning import make_mesh

SR = 16000
TINY = wb.preset("tiny", num_contrastive_layers=1, num_mlm_layers=1)  # short compiles


def waves(n, seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [tone_clip(rng, int(seconds * SR), SR) for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("w2v"))
    summary = train(W2vBertFamily(config=TINY, warmup_steps=1), model_dir=d,
                    dataset=lambda **kw: synthetic_tones(num_samples=16000, **kw), batch_size=8, num_steps=2,
                    progress=False, tensorboard=False, async_checkpoints=False, rng_impl="rbg",
                    mesh_fn=lambda: make_mesh(devices=jax.devices()[:1]))
    assert summary["step"] == 2
    report = fit_kmeans(d, waves(6, 3.0), SR, num_clusters=8, max_frames=1000, batch_size=128, num_steps=10)
    assert report["num_frames"] == 6 * 75 and 0 < report["used_fraction"] <= 1
    return d


@pytest.fixture(scope="module")
def tok(model_dir):
    return SemanticTokenizer.from_checkpoint(model_dir, chunk_frames=40, chunk_batch=4)


def test_tokens_shape_range_determinism(tok):
    wave = waves(1, 5.0, seed=1)[0]
    ids = tok.tokens(wave, SR)
    assert ids.shape == (1, 125) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 8
    np.testing.assert_array_equal(ids, tok.tokens(wave.copy(), SR))
    batch = tok.tokens(np.stack([wave, wave[::-1].copy()]), SR)
    np.testing.assert_array_equal(batch[0], ids[0])  # rows are independent


def test_chunk_invariance(tok, model_dir):
    wave = waves(1, 12.0, seed=2)[0]
    rf = tok.context_frames
    # Chunking does not matter at all: the context covers the receptive field.
    other = SemanticTokenizer(tok.model, tok.kmeans, tok.fingerprint, chunk_frames=97, chunk_batch=2)
    np.testing.assert_array_equal(tok.tokens(wave, SR), other.tokens(wave, SR))
    # A cut changes only tokens within one receptive field of it.
    full = tok.tokens(wave, SR)[0]
    cut = 100  # frames
    tail = tok.tokens(wave[cut * 640:], SR)[0]
    np.testing.assert_array_equal(full[cut + rf:], tail[rf:])
    head = tok.tokens(wave[:cut * 640], SR)[0]
    np.testing.assert_array_equal(full[:cut - rf], head[:cut - rf])


def test_resampling_mono_silence_and_bad_input(tok):
    wave = waves(1, 2.0, seed=3)[0]
    assert tok.tokens(np.zeros(SR * 2, np.float32), SR).shape == (1, 50)  # silence is fine
    stereo = np.stack([wave, wave])[None]  # [batch, channels, samples]
    np.testing.assert_array_equal(tok.tokens(stereo, SR), tok.tokens(wave, SR))
    assert tok.tokens(np.zeros(44100, np.float32), 44100).shape == (1, 25)  # 1 s at 44.1 kHz -> 25 frames
    bad = wave.copy()
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tok.tokens(bad, SR)
    with pytest.raises(ValueError, match="shorter than one frame"):
        tok.tokens(np.zeros(100, np.float32), SR)


def test_provenance(tok, model_dir, tmp_path):
    assert tok.kmeans.fingerprint == tok.fingerprint and len(tok.fingerprint) == 16
    meta = json.load(open(os.path.join(model_dir, "kmeans", "kmeans.json")))
    assert meta["fingerprint"] == tok.fingerprint and meta["feature_layer"] == 1
    # A k-means fitted on another checkpoint is refused.
    KMeans(centers=tok.kmeans.centers, fingerprint="0" * 16).save(str(tmp_path / "km"))
    with pytest.raises(ValueError, match="refit"):
        SemanticTokenizer.from_checkpoint(model_dir, kmeans_dir=str(tmp_path / "km"))
    with pytest.raises(ValueError, match="fit-kmeans"):
        SemanticTokenizer.from_checkpoint(model_dir, kmeans_dir=str(tmp_path / "none"))


def test_chroma_kmeans_travels_with_the_clusters(model_dir, tmp_path):
    """`fit_kmeans(chroma_weight=)` clusters features + chroma; the weight is saved with the k-means and read back."""
    import shutil

    d = str(tmp_path / "chroma")
    shutil.copytree(model_dir, d)
    fit_kmeans(d, waves(6, 3.0), SR, num_clusters=8, max_frames=1000, batch_size=128, num_steps=10,
               chroma_weight=1.5)
    meta = json.load(open(os.path.join(d, "kmeans", "kmeans.json")))
    assert meta["chroma_weight"] == 1.5 and meta["dim"] == TINY.embed_dim + 12
    tok = SemanticTokenizer.from_checkpoint(d, chunk_frames=40, chunk_batch=4)
    assert tok.chroma_weight == 1.5 and tok.describe()["chroma_weight"] == 1.5
    wave = waves(1, 5.0, seed=1)[0]
    x = tok.token_features(wave, SR)
    assert x.shape == (1, 125, TINY.embed_dim + 12)
    np.testing.assert_allclose(np.linalg.norm(x[0, :, :-12], axis=-1), 1.0, rtol=1e-4)   # unit features
    assert np.all(np.linalg.norm(x[0, 5:-5, -12:], axis=-1) > 1.4)                       # 1.5 x unit chroma
    ids = tok.tokens(wave, SR)
    assert ids.shape == (1, 125) and ids.max() < 8
    other = SemanticTokenizer(tok.model, tok.kmeans, tok.fingerprint, chunk_frames=97, chunk_batch=2)
    np.testing.assert_array_equal(ids, other.tokens(wave, SR))


def test_evaluate_and_cli(tok, model_dir, tmp_path):
    ws = waves(4, 2.0, seed=4)
    res = evaluate.evaluate_tokenizer(tok, ws, SR, [{"score_id": s} for s in ("a", "a", "b", "b")])
    assert res["num_tokens"] == 200 and res["tokens_per_sec"] > 0
    assert res["same_score_pairs"] == 2 and res["different_score_pairs"] == 4
    assert 0 <= res["same_score_agreement"] <= 1
    assert evaluate.pair_agreement([np.array([1, 2, 3]), np.array([1, 2, 4])], ["x", "x"])[
        "same_score_agreement"] == pytest.approx(2 / 3)

    import soundfile as sf
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    sf.write(str(audio_dir / "a.wav"), ws[0], SR)
    sf.write(str(audio_dir / "b.wav"), np.stack([ws[1], ws[1]], 1), 22050)  # stereo, other rate
    (audio_dir / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "tokens.jsonl"
    args = parser.parse_args(["semantic", "tokenize", "--model_dir", model_dir, "--audio_dir", str(audio_dir),
                              "--out", str(out)])
    result = args.func(args)
    assert result["written"] == 2 and len(result["skipped"]) == 1
    rows = [json.loads(line) for line in open(out)]
    assert rows[0]["tokenizer"]["w2v_bert_fingerprint"] == tok.fingerprint and len(rows[0]["tokens"]) == 50
    with pytest.raises(ValueError, match="exactly one corpus"):
        commands.load_corpus(parser.parse_args(["semantic", "eval", "--model_dir", model_dir]))
