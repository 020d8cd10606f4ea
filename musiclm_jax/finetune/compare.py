"""Held-out comparison of MusicLM directories on the finetuning rewards (issue 18): every model generates
`samples_per_prompt` clips of each prompt with the same seeds; each reward is averaged over a prompt's samples, and
`diversity` is minus the mean MuLan-audio cosine between a prompt's samples. Every model after the first gets the
paired difference to the first (per prompt) with a 95 % bootstrap interval.

A model is NAME=DIR, or NAME=DIR:unguided to decode its semantic stage without guidance (what an RL-finetuned or
distilled model does, so the base measured the same way is the fair reference).
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np


def parse_model(spec: str) -> tuple[str, str, bool]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"model {spec!r}: write NAME=DIR (or NAME=DIR:unguided), e.g. base=weights/musiclm")
    unguided = path.endswith(":unguided")
    return name, path.removesuffix(":unguided"), unguided


def compare(models: Sequence[str], prompts: Sequence[str], rewards: dict, mulan, *, seconds: float = 8.0,
            samples_per_prompt: int = 2, batch_size: int = 16) -> dict:
    """{"models": {name: {reward: {"mean", "interval"[, "diff", "diff_interval"]}}}, ...} (see the docstring)."""
    from musiclm_jax.eval.metrics import bootstrap_interval
    from musiclm_jax.finetune.rewards import diversity_reward
    from musiclm_jax.pipeline import MusicLM

    if samples_per_prompt < 2:
        raise ValueError("--samples_per_prompt must be >= 2 (diversity compares a prompt's samples)")
    specs = [parse_model(m) for m in models]
    if len({name for name, _, _ in specs}) != len(specs):
        raise ValueError(f"model names must differ: {[name for name, _, _ in specs]}")
    k, per_prompt = samples_per_prompt, {}
    for name, path, unguided in specs:
        if not os.path.exists(os.path.join(path, "musiclm.json")):
            raise ValueError(f"{path} is not an exported MusicLM (no musiclm.json)")
        lm = MusicLM.from_pretrained(path, load_semantic_tokenizer=False)
        if unguided:
            lm.unguided_stages = tuple(sorted({*lm.unguided_stages, "semantic"}))
        scores = {r: [] for r in [*rewards, "diversity"]}
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            gen = lm.generate_full(chunk, seconds, num_samples=k, rerank=False,
                                   seed=list(range(start, start + len(chunk))), progress=False)
            waves = gen.all_waves.reshape(-1, gen.all_waves.shape[-1])
            rows = [p for p in chunk for _ in range(k)]
            for r, fn in rewards.items():
                scores[r].append(np.asarray(fn(waves, gen.sample_rate, rows), np.float64).reshape(-1, k).mean(1))
            emb = np.stack([mulan.embed_audio(w, gen.sample_rate) for w in waves])
            groups = [start + i // k for i in range(len(rows))]   # one group per prompt, even for repeated texts
            scores["diversity"].append(diversity_reward(emb, groups).reshape(-1, k).mean(1))
        per_prompt[name] = {r: np.concatenate(v) for r, v in scores.items()}
    ref = specs[0][0]
    out = {}
    for name, res in per_prompt.items():
        out[name] = {}
        for r, v in res.items():
            entry = {"mean": float(np.nanmean(v)), "interval": bootstrap_interval(v[np.isfinite(v)])}
            if name != ref:
                d = v - per_prompt[ref][r]
                d = d[np.isfinite(d)]
                entry.update(diff=float(d.mean()) if d.size else float("nan"), diff_interval=bootstrap_interval(d))
            out[name][r] = entry
    return {"reference": ref, "prompts": len(prompts), "samples_per_prompt": k, "seconds": seconds,
            "models": out, "per_prompt": {n: {r: v.tolist() for r, v in res.items()} for n, res in per_prompt.items()}}


def summary_lines(result: dict) -> list[str]:
    lines = []
    for name, res in result["models"].items():
        cells = []
        for r, e in res.items():
            cell = f"{r} {e['mean']:.3f}"
            if e.get("diff_interval"):
                lo, hi = e["diff_interval"]
                cell += f" ({e['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}])"
            cells.append(cell)
        lines.append(f"{name}: " + ", ".join(cells))
    return lines


def write(result: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
