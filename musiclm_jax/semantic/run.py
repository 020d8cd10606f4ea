"""w2v-BERT end to end: k-means on features sampled from the corpus (training is the shared trainer: `train.*`).

Used by `musiclm-jax semantic ...` and the tests; the training loop itself is `musiclm_jax.train.trainer.train`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable

import gin
import jax
import numpy as np

from musiclm_jax.semantic.api import KMEANS_DIR, SemanticTokenizer
from musiclm_jax.quantization.kmeans import KMeansConfig, cluster_usage, fit

log = logging.getLogger(__name__)


def sample_features(tokenizer: SemanticTokenizer, waves: Iterable[np.ndarray], sample_rate: int,
                    max_frames: int, seed: int = 0) -> np.ndarray:
    """Features of every clip, then a deterministic random subset of at most `max_frames` frames [N, D]."""
    feats = [tokenizer.token_features(w, sample_rate)[0] for w in waves]
    if not feats:
        raise ValueError("no audio to fit k-means on: give a corpus with at least one clip")
    allf = np.concatenate(feats)
    if len(allf) > max_frames:
        allf = allf[np.sort(np.random.default_rng(seed).choice(len(allf), max_frames, replace=False))]
    return allf


@gin.configurable
def fit_kmeans(model_dir: str, waves: Iterable[np.ndarray], sample_rate: int, num_clusters: int = 1024,
               max_frames: int = 200_000, batch_size: int = 4096, num_steps: int = 200, seed: int = 0,
               mesh: jax.sharding.Mesh | None = None, chroma_weight: float = 0.0) -> dict:
    """Fits k-means on features of `waves` from the checkpoint in `model_dir` (with `chroma_weight` > 0: beside
    their chroma, see semantic/api.py); saves `<model_dir>/kmeans` with the checkpoint's fingerprint and writes
    kmeans_report.json (cluster usage and entropy on the fitting frames)."""
    tok = SemanticTokenizer.from_checkpoint(model_dir, require_kmeans=False)
    tok = SemanticTokenizer(tok.model, None, tok.fingerprint, chunk_frames=tok.chunk_frames,
                            chunk_batch=tok.chunk_batch, chroma_weight=chroma_weight)
    feats = sample_features(tok, waves, sample_rate, max_frames, seed)
    cfg = KMeansConfig(num_clusters=num_clusters, batch_size=min(batch_size, len(feats)), num_steps=num_steps,
                       init_samples=min(len(feats), max(4 * num_clusters, 4096)), seed=seed)
    if mesh is not None:
        from musiclm_jax.train import partitioning
        with partitioning.axis_rules(mesh):
            model = fit(feats, cfg, mesh=mesh, fingerprint=tok.fingerprint)
    else:
        model = fit(feats, cfg, fingerprint=tok.fingerprint)
    model.meta["feature_layer"] = tok.layer
    model.meta["chroma_weight"] = tok.chroma_weight
    model.save(os.path.join(model_dir, KMEANS_DIR))
    report = {"num_frames": int(len(feats)), "fingerprint": tok.fingerprint,
              **cluster_usage(model.predict(feats), num_clusters),
              "inertia_per_frame": model.meta["last_batch_inertia"]}
    with open(os.path.join(model_dir, "kmeans_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    log.info("k-means %d clusters on %d frames: %.0f%% used, normalized entropy %.3f", num_clusters, len(feats),
             100 * report["used_fraction"], report["normalized_entropy"])
    return report
