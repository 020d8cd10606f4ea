"""MuLan text tower: the Flax MiniLM port against sentence-transformers' reference embeddings; tokenizer edge cases."""
import json
import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax.mulan.text import TextTokenizer, build_text_encoder, minilm_config

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder(minilm_config(), nnx.Rngs(0))


def test_port_matches_sentence_transformers_reference(encoder):
    ref = json.loads(FIXTURE.read_text())
    tok = TextTokenizer(max_length=ref["max_seq_length"])
    ids, mask = tok(ref["sentences"])
    assert ids.shape[1] == ref["max_seq_length"]  # the last sentence is truncated like the reference's
    pooled = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask)))
    ours = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    want = np.asarray(ref["embeddings"], np.float32)
    np.testing.assert_allclose(ours, want, atol=1e-4)
    # Not trivially close: different sentences are far apart.
    assert float(want[1] @ want[3]) < 0.9


def test_padding_does_not_change_embedding(encoder):
    tok = TextTokenizer(max_length=128)
    one = np.asarray(encoder(*map(jnp.asarray, tok(["soft piano"]))))
    ids, mask = tok(["soft piano", "a much longer caption with many more words in it than the first"])
    two = np.asarray(encoder(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(two[0], one[0], atol=1e-5)


@pytest.mark.parametrize("bad", [[""], ["   \n\t"], ["ok", ""], []])
def test_empty_text_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="empty|no texts"):
        TextTokenizer()(bad)


def test_single_string_is_a_clear_error():
    with pytest.raises(ValueError, match="list of strings"):
        TextTokenizer()("a song")


def test_long_text_truncated_with_one_warning(caplog):
    tok = TextTokenizer(max_length=16)
    with caplog.at_level(logging.WARNING):
        ids, mask = tok(["drums " * 50])
        tok(["bass " * 50])
    assert ids.shape == (1, 16) and mask.sum() == 16
    assert ids[0, -1] == tok.sep_id
    assert sum("truncated" in r.message for r in caplog.records) == 1
