"""Melody embedder (musiclm_jax/melody/): the semi-hard triplet loss, a tiny embedder that learns to tell planted
lead lines apart in other sounds and from their transposed copies, the inference API and its bad-input errors."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.melody import losses

SR = 16000
LINES = [  # four planted lines (pitch, start, end), 1.5 s each
    [(60, 0.0, 0.375), (64, 0.375, 0.75), (67, 0.75, 1.125), (72, 1.125, 1.5)],
    [(72, 0.0, 0.375), (67, 0.375, 0.75), (64, 0.75, 1.125), (60, 1.125, 1.5)],
    [(62, 0.0, 0.5), (69, 0.5, 1.0), (66, 1.0, 1.5)],
    [(65, 0.0, 0.25), (65, 0.25, 0.5), (70, 0.5, 1.0), (63, 1.0, 1.5)],
]


def _unit(x):
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_semi_hard_triplet_loss():
    a = _unit(np.eye(4)[:2])
    # Positives equal to anchors, negatives orthogonal: every distance margin satisfied -> zero loss.
    loss, m = losses.semi_hard_triplet_loss(a, a, _unit(np.eye(4)[2:]), margin=0.5)
    assert float(loss) == 0.0 and float(m["triplet_accuracy"]) == 1.0 and float(m["batch_r1"]) == 1.0
    # Negatives equal to anchors, positives orthogonal (d = 2): no negative is farther than the positive, so the
    # mildest violation counts (another row's positive or negative, d = 2): loss = 2 - 2 + margin.
    loss, m = losses.semi_hard_triplet_loss(a, _unit(np.eye(4)[2:]), a, margin=0.5)
    assert float(m["triplet_accuracy"]) == 0.0 and abs(float(loss) - 0.5) < 1e-5
    # Semi-hard: of two negatives farther than the positive, the nearer one counts.
    anchor = _unit([[1.0, 0.0, 0.0]])
    pos = _unit([[0.9, 0.1, 0.0]])
    near, far = _unit([[0.7, 0.7, 0.0]]), _unit([[0.0, 0.0, 1.0]])
    d_ap = float(jnp.sum((anchor - pos) ** 2))
    l_near, _ = losses.semi_hard_triplet_loss(anchor, pos, near, margin=1.0)
    d_near = float(jnp.sum((anchor - near) ** 2))
    np.testing.assert_allclose(float(l_near), max(0.0, d_ap - d_near + 1.0), rtol=1e-5)
    l_far, _ = losses.semi_hard_triplet_loss(anchor, pos, far, margin=1.0)
    assert float(l_far) < float(l_near)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from musiclm_jax.melody.data import build_bank

    d = tmp_path_factory.mktemp("bank")
    clips = [{"clip_id": f"line{i}", "lead_notes": {"pitch": np.array([p for p, _, _ in line]),
                                                    "start": np.array([s for _, s, _ in line]),
                                                    "end": np.array([e for _, _, e in line])}}
             for i, line in enumerate(LINES)]
    clips.append({"clip_id": "no_lead", "lead_notes": {"pitch": np.zeros(0), "start": np.zeros(0),
                                                       "end": np.zeros(0)}})
    report = build_bank(clips, str(d), "train", seconds=1.5)
    assert report["lines"] == 4 and report["skipped"] == ["no_lead (lead line of 0 notes in 1.5 s)"]
    build_bank(clips[:4], str(d), "validation", seconds=1.5)
    return str(d)


def test_triplet_batches_are_resumable(bank):
    from musiclm_jax.melody.data import melody_triplets

    data = melody_triplets(batch_size=4, bank_dir=bank, window_seconds=1.0)
    first = [next(data) for _ in range(3)]
    assert first[0]["anchor"].shape == (4, SR) and first[0]["negative"].dtype == np.float32
    data.set_state({"position": 2})
    np.testing.assert_array_equal(next(data)["positive"], first[2]["positive"])
    with pytest.raises(ValueError, match="longer than the bank"):
        melody_triplets(batch_size=4, bank_dir=bank, window_seconds=3.0)
    with pytest.raises(ValueError, match="render-bank"):
        melody_triplets(batch_size=4, bank_dir=bank + "_missing")


def test_tiny_embedder_learns_planted_lines(bank, tmp_path, capsys):
    import gin

    from musiclm_jax import cli
    from musiclm_jax.melody.api import Melody, chroma_embed, retrieval, windows
    from musiclm_jax.melody.data import load_bank

    model_dir = tmp_path / "melody"
    small = ["MelodyConfig.window_seconds = 1.0", "melody_triplets.window_seconds = 1.0", "BATCH_SIZE = 8",
             "MelodyConfig.d_model = 32", "MelodyConfig.head_dim = 16", "MelodyConfig.d_ff = 64",
             "train.eval_period = 0", "train.log_period = 10", "make_schedule.learning_rate = 0.003",
             "make_schedule.warmup_steps = 5"]
    try:
        rc = cli.main(["melody", "train", "--model_dir", str(model_dir), "--bank_dir", bank, "--steps", "60",
                       *[f"--gin_bindings={b}" for b in small]])
    finally:
        gin.clear_config()
    assert rc == 0 and "done: step 60" in capsys.readouterr().out
    logged = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line and "eval" not in line]
    assert logged[-1]["loss"] < 0.7 * logged[0]["loss"], (logged[0]["loss"], logged[-1]["loss"])

    mel = Melody.from_checkpoint(str(model_dir))
    audio, _, meta = load_bank(bank, "train")
    report = retrieval(mel.embed_batch, audio, len(meta["timbres"]), mel.cfg.window_samples)
    assert report["candidates"] == 4 and report["top1"] > 0.5 and report["transposition_accuracy"] > 0.5, report
    chroma = retrieval(lambda x: chroma_embed(x, SR), audio, len(meta["timbres"]), mel.cfg.window_samples)
    assert chroma["top1"] > 0.5 and chroma["transposition_accuracy"] > 0.9, chroma   # the baseline is sound
    emb = mel.embed_windows(audio[0, 0].astype(np.float32) / 32768, SR)
    assert emb.shape == (2, 32) and np.allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-4)

    with pytest.raises(ValueError, match="fit-quantizer"):
        mel.tokens(audio[0, 0].astype(np.float32) / 32768, SR)
    assert cli.main(["melody", "fit-quantizer", "--model_dir", str(model_dir), "--bank_dir", bank]) == 0
    mel = Melody.from_checkpoint(str(model_dir))
    toks = mel.tokens(audio[0, 0].astype(np.float32) / 32768, SR)
    assert toks.shape == (2, mel.cfg.rvq_levels) and toks.dtype == np.int32
    assert 0 <= toks.min() and toks.max() < mel.cfg.rvq_codebook_size
    np.testing.assert_array_equal(Melody.from_checkpoint(str(model_dir)).tokens(audio[0, 0] / 32768, SR), toks)
    assert mel.token_fingerprint.startswith(mel.fingerprint) and len(mel.fingerprint) == 16

    rc = cli.main(["melody", "eval", "--model_dir", str(model_dir), "--bank_dir", bank, "--split", "train",
                   "--out", str(tmp_path / "r.json")])
    assert rc == 0 and json.loads((tmp_path / "r.json").read_text())["top1"] == report["top1"]
    with pytest.raises(ValueError, match="NaN"):
        windows(np.full(100, np.nan, np.float32), mel.cfg)
    with pytest.raises(ValueError, match="mono"):
        windows(np.zeros((2, 100), np.float32), mel.cfg)
    assert cli.main(["melody", "eval", "--model_dir", str(tmp_path), "--bank_dir", bank]) == 2
