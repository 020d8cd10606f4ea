"""Sampling from a trained token-LM checkpoint (the library part of `python -m musiclm_jax.infer`).

Restores the parameters of the latest checkpoint in `model_dir` onto the configured mesh (any mesh: orbax reshards),
takes prompts from the dataset (the first `prompt_length` target tokens of each row), samples continuations with
the KV cache and writes one JSON line per sample: {"batch", "row", "sample", "prompt", "tokens"}.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable

import gin
import jax
import numpy as np

from musiclm_jax.train import partitioning
from musiclm_jax.train.loader import load_for_inference
from musiclm_jax.train.trainer import Family

log = logging.getLogger(__name__)


@gin.configurable
def infer(family: Family = gin.REQUIRED, *, model_dir: str = gin.REQUIRED, output_path: str = gin.REQUIRED,
          dataset: Callable = gin.REQUIRED, batch_size: int = gin.REQUIRED, prompt_length: int = gin.REQUIRED,
          max_new_tokens: int = gin.REQUIRED, num_batches: int = 1, temperature: float = 1.0, top_k: int = 0,
          top_p: float = 1.0, num_samples: int = 1, eos_id: int | None = None, seed: int = 0,
          mesh_fn: Callable = partitioning.make_mesh, rules_fn: Callable = partitioning.logical_axis_rules) -> dict:
    """Writes samples to `output_path` (JSONL) and returns {"step", "num_samples", "output_path"}."""
    if not hasattr(family, "predict"):
        raise ValueError(f"family {family.name!r} has no predict(): inference is for token LMs")
    mesh, rules = mesh_fn(), rules_fn()
    models, _, _, step = load_for_inference(family, model_dir, mesh=mesh, rules=rules, seed=seed)
    data = dataset(split="eval", batch_size=batch_size, seed=seed, shard_index=0, num_shards=1)
    written = 0
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with partitioning.axis_rules(mesh, rules), open(output_path, "w") as out:
        for b in range(num_batches):
            batch = {k: np.asarray(v) for k, v in next(data).items()}
            result = family.predict(models, batch, rng=jax.random.fold_in(jax.random.key(seed), b),
                                    prompt_length=prompt_length, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
                                    eos_id=eos_id)
            for i, (tokens, n) in enumerate(zip(result["tokens"], result["lengths"])):
                row = i // num_samples
                out.write(json.dumps({"batch": b, "row": int(row), "sample": i % num_samples,
                                      "prompt": result["prompt"][row].tolist(),
                                      "tokens": tokens[:int(n)].tolist()}) + "\n")
                written += 1
    log.info("wrote %d samples from step %d to %s", written, step, output_path)
    return {"step": step, "num_samples": written, "output_path": output_path}

