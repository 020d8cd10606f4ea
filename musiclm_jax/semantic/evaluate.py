"""Evaluation of a semantic tokenizer: cluster usage and entropy, speed, and timbre invariance.

* usage: fraction of the k-means clusters the corpus uses, entropy of the token histogram (nats, and / log K).
* speed: tokens per second and the real-time factor (seconds of audio per second of wall time), after a warm-up
  call so compilation is not counted.
* two-soundfont agreement: SynthCaps renders every score with two soundfonts. Semantic tokens should follow the
  music, not the timbre: the frame-wise agreement of tokens of the same score (different soundfonts) should exceed
  that of different scores. Both rates are reported; clips are aligned from their first frame.
"""
from __future__ import annotations

import itertools
import time

import numpy as np

from musiclm_jax.quantization.kmeans import cluster_usage


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.mean(a[:n] == b[:n])) if n else 0.0


def pair_agreement(tokens: list[np.ndarray], score_ids: list[str], max_pairs: int = 2000,
                   seed: int = 0) -> dict:
    """Mean token agreement of same-score pairs and of different-score pairs (a deterministic sample)."""
    same, diff = [], []
    for i, j in itertools.combinations(range(len(tokens)), 2):
        (same if score_ids[i] == score_ids[j] else diff).append((i, j))
    rng = np.random.default_rng(seed)
    if len(diff) > max_pairs:
        diff = [diff[k] for k in rng.choice(len(diff), max_pairs, replace=False)]
    out = {"same_score_pairs": len(same), "different_score_pairs": len(diff)}
    if same:
        out["same_score_agreement"] = float(np.mean([agreement(tokens[i], tokens[j]) for i, j in same]))
    if diff:
        out["different_score_agreement"] = float(np.mean([agreement(tokens[i], tokens[j]) for i, j in diff]))
    return out


def evaluate_tokenizer(tok, waves: list[np.ndarray], sample_rate: int, clips: list[dict] | None = None) -> dict:
    """Usage/entropy, speed and (when clips carry `score_id`) the two-soundfont agreement."""
    tok.tokens(waves[0], sample_rate)  # warm-up: compile
    start = time.perf_counter()
    tokens = [tok.tokens(w, sample_rate)[0] for w in waves]
    elapsed = time.perf_counter() - start
    total = sum(len(t) for t in tokens)
    seconds = sum(len(w) for w in waves) / sample_rate
    results = {"num_clips": len(waves), "num_tokens": int(total), "tokens_per_sec": total / elapsed,
               "real_time_factor": seconds / elapsed, "fingerprint": tok.fingerprint,
               **cluster_usage(np.concatenate(tokens), tok.num_tokens)}
    if clips and all("score_id" in c for c in clips):
        results.update(pair_agreement(tokens, [str(c["score_id"]) for c in clips]))
    return results
