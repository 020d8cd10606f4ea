"""Data hook of the trainer, and a built-in synthetic token dataset.

The trainer calls a *dataset function* `fn(split=, batch_size=, seed=, shard_index=, num_shards=)` (batch_size is
this host's share) and gets an iterator of numpy batches with `get_state() -> dict` (JSON-able) and
`set_state(dict)`: a `ResumableBatches`, whose state is the number of batches given. The state is saved in every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would. A SeqIO task plugs in the same way: wrap its tf.data pipeline in an iterator whose state
is the number of batches consumed (deterministic pipelines) or a tf.data iterator checkpoint.

`synthetic_tokens` makes learnable sequences (a sparse random Markov chain, or a copy task) that depend only on
(seed, split, shard, batch index): no files, no downloads, resumable by construction.
"""
from __future__ import annotations

import gin
import numpy as np

KINDS = ("markov", "copy")
SPLIT_IDS = {"train": 0, "eval": 1, "validation": 1, "test": 2}


def split_id(split: str) -> int:
    """The number a split seeds its batches with (eval and validation are the same held-out split)."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}: use one of {sorted(SPLIT_IDS)}")
    return SPLIT_IDS[split]


class ResumableBatches:
    """Base of every dataset function's iterator: its state is `position`, the number of batches it has given, and
    batch n depends only on how the iterator was built and n, so `set_state` resumes the same stream.

    A subclass implements `make_batch(position)`; one that cannot jump there (a tf.data pipeline) overrides
    `set_state` to rebuild and skip."""

    position: int = 0

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict | None) -> None:
        state = state or {}
        # "index": what MuLan checkpoints written before this base class call the position.
        self.position = int(state.get("position", state.get("index", 0)))

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.make_batch(self.position)
        self.position += 1
        return batch


class SyntheticTokens(ResumableBatches):
    """Iterator of {"targets": int32 [batch, length]} with tokens in [first_token, vocab_size)."""

    def __init__(self, *, vocab_size: int, length: int, batch_size: int, kind: str = "markov", seed: int = 0,
                 split: str = "train", shard_index: int = 0, num_shards: int = 1, branching: int = 2,
                 first_token: int = 1, prefix_length: int = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown synthetic kind {kind!r}: use one of {KINDS}")
        if vocab_size - first_token < 2 or length < 2 or batch_size < 1:
            raise ValueError(f"synthetic tokens need vocab_size > first_token + 1, length >= 2 and batch_size >= 1 "
                             f"(got vocab_size={vocab_size}, first_token={first_token}, length={length}, "
                             f"batch_size={batch_size})")
        if not 0 <= prefix_length < length:
            raise ValueError(f"prefix_length must be in [0, length), got {prefix_length}")
        self.vocab_size, self.length, self.batch_size, self.kind = vocab_size, length, batch_size, kind
        self.first_token, self.prefix_length = first_token, prefix_length
        self.key = (seed, split_id(split), shard_index, num_shards)
        # The chain is the same for every split and shard (it is "the language"); only the samples differ.
        n = vocab_size - first_token
        table_rng = np.random.default_rng([seed, 12345])
        self.successors = table_rng.integers(n, size=(n, max(1, branching)))

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([*self.key, position])
        n, b, length = self.vocab_size - self.first_token, self.batch_size, self.length
        if self.kind == "markov":
            seq = np.empty((b, length), np.int64)
            seq[:, 0] = rng.integers(n, size=b)
            choice = rng.integers(self.successors.shape[1], size=(b, length))
            for t in range(1, length):
                seq[:, t] = self.successors[seq[:, t - 1], choice[:, t]]
        else:  # copy: a random first half, repeated
            half = rng.integers(n, size=(b, (length + 1) // 2))
            seq = np.concatenate([half, half], axis=1)[:, :length]
        seq = (seq + self.first_token).astype(np.int32)
        if self.prefix_length:
            return {"inputs": seq[:, :self.prefix_length], "targets": seq[:, self.prefix_length:]}
        return {"targets": seq}


@gin.configurable
def synthetic_tokens(*, split: str = "train", batch_size: int, seed: int = 0, shard_index: int = 0,
                     num_shards: int = 1, vocab_size: int = gin.REQUIRED, length: int = gin.REQUIRED,
                     kind: str = "markov", branching: int = 2, prefix_length: int = 0) -> SyntheticTokens:
    """Dataset function (see module docstring) for the synthetic token LM data."""
    return SyntheticTokens(vocab_size=vocab_size, length=length, batch_size=batch_size, kind=kind, seed=seed,
                           split=split, shard_index=shard_index, num_shards=num_shards, branching=branching,
                           prefix_length=prefix_length)
