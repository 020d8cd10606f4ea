"""Rewards for finetuning (issue 18): each one scores a batch of generated audio against its prompts.

    reward(waves [n, samples], sample_rate, prompts [n]) -> float32 [n]   (nan where the prompt states nothing)

- `MuLanReward`: cosine between MuLan's text embedding of the prompt and its audio embedding (the MCC per item).
- `TempoReward`, `KeyReward`: adherence to what the prompt states (`prompt_facts`: "128 BPM" / "beats per minute",
  "in (the key of) F# minor"), with the eval suite's estimators (`eval/metrics.py`): tempo as a smooth score of the
  log ratio to the stated BPM (octave-tolerant, 1 within the eval's 5 %), key as the MIREX score (1 same key, 0.5 a
  fifth, 0.3 relative, 0.2 parallel).
- `PulseReward`: a "sounds like music" score without a prompt: pulse clarity x tonal clarity (both in the eval
  suite), high for a steady beat in a key, low for noise or a drone.
- `diversity_reward`: for samples of one prompt, minus the mean cosine similarity of each sample's embedding to
  the other samples' (the CFG-distillation follow-up's diversity term); needs an embedder (e.g. MuLan audio).
  `DiversityReward` is it on MuLan audio embeddings as a reward (samples of one prompt = rows with its text).
- `weighted`: a weighted sum of rewards, nan-safe (a reward with nothing to say for an item adds 0 there).

Instrument and genre adherence rewards are not built here: the eval suite scores them with probes on a tagger's
embeddings (`eval fit-probe`), which would plug in the same way.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from musiclm_jax.data.synthcaps.captions import BPM_PATTERN, KEY_PATTERN
from musiclm_jax.eval import metrics



class Reward(Protocol):
    def __call__(self, waves: np.ndarray, sample_rate: int, prompts: Sequence[str]) -> np.ndarray: ...


def prompt_facts(prompt: str) -> dict:
    """What a caption states that audio can be checked against: {"bpm": float, "tonic": str, "mode": str} (each
    only when stated)."""
    facts = {}
    m = BPM_PATTERN.search(prompt)
    if m:
        facts["bpm"] = float(m.group(1))
    k = KEY_PATTERN.search(prompt)
    if k:
        facts["tonic"], facts["mode"] = k.group(1)[0].upper() + k.group(1)[1:], k.group(2).lower()
    return facts


def _check(waves, prompts) -> np.ndarray:
    waves = np.asarray(waves, np.float32)
    if waves.ndim != 2 or len(prompts) != len(waves):
        raise ValueError(f"a reward scores waves [n, samples] with n prompts; got waves {waves.shape} and "
                         f"{len(prompts)} prompts")
    return waves


def tempo_score(estimate: float, bpm: float, width: float = 0.05) -> float:
    """exp(-(d / width)^2 / 2) with d the smallest |log(estimate / (bpm x f))| over the octave factors f: 1 at the
    stated tempo or an octave of it, ~0.6 at the eval's 5 % tolerance, ~0 far off."""
    if estimate <= 0 or bpm <= 0:
        return 0.0
    d = min(abs(np.log(estimate / (bpm * f))) for f in metrics.OCTAVE_FACTORS)
    return float(np.exp(-0.5 * (d / width) ** 2))


class TempoReward:
    def __init__(self, width: float = 0.05):
        self.width = width

    def __call__(self, waves, sample_rate, prompts):
        waves = _check(waves, prompts)
        out = np.full(len(waves), np.nan, np.float32)
        for i, (wave, prompt) in enumerate(zip(waves, prompts)):
            bpm = prompt_facts(prompt).get("bpm")
            if bpm:
                out[i] = tempo_score(metrics.estimate_tempo(wave, sample_rate), bpm, self.width)
        return out


class KeyReward:
    def __call__(self, waves, sample_rate, prompts):
        waves = _check(waves, prompts)
        out = np.full(len(waves), np.nan, np.float32)
        for i, (wave, prompt) in enumerate(zip(waves, prompts)):
            facts = prompt_facts(prompt)
            if "tonic" in facts:
                tonic, mode = metrics.estimate_key(wave, sample_rate)
                out[i] = metrics.key_score(tonic, mode, facts["tonic"], facts["mode"])
        return out


class PulseReward:
    def __call__(self, waves, sample_rate, prompts):
        waves = _check(waves, prompts)
        return np.asarray([metrics.pulse_clarity(w, sample_rate) * max(0.0, metrics.tonal_clarity(w, sample_rate))
                           for w in waves], np.float32)


class MuLanReward:
    """Text-audio cosine of a MuLan (`musiclm_jax.mulan.api.MuLan`, or anything with embed_text / embed_audio)."""

    def __init__(self, mulan):
        self.mulan = mulan

    def __call__(self, waves, sample_rate, prompts):
        waves = _check(waves, prompts)
        text = np.asarray(self.mulan.embed_text(list(prompts)), np.float64)
        audio = np.stack([np.asarray(self.mulan.embed_audio(w, sample_rate), np.float64) for w in waves])
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
        return np.sum(unit(text) * unit(audio), axis=-1).astype(np.float32)


def diversity_reward(embeddings: np.ndarray, groups: Sequence) -> np.ndarray:
    """[n] minus the mean cosine similarity of each embedding to the others of its group (the samples of one
    prompt); nan for an item alone in its group. -1: identical samples; 0: orthogonal ones."""
    emb = np.asarray(embeddings, np.float64)
    if emb.ndim != 2 or len(groups) != len(emb):
        raise ValueError(f"diversity_reward needs embeddings [n, d] and n group ids; got {emb.shape}, {len(groups)}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    groups = np.asarray([str(g) for g in groups])
    out = np.full(len(emb), np.nan, np.float32)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < 2:
            continue
        sim = emb[idx] @ emb[idx].T
        out[idx] = -(sim.sum(axis=1) - np.diag(sim)) / (len(idx) - 1)
    return out


class DiversityReward:
    """`diversity_reward` of MuLan audio embeddings, the samples of one prompt (equal prompt text) as a group: a
    reward on the batch as a whole, so give it every sample of a prompt in one call (`rl.audio_scorer` does)."""

    def __init__(self, mulan):
        self.mulan = mulan

    def __call__(self, waves, sample_rate, prompts):
        waves = _check(waves, prompts)
        emb = np.stack([np.asarray(self.mulan.embed_audio(w, sample_rate), np.float64) for w in waves])
        return diversity_reward(emb, list(prompts))


def weighted(rewards: dict[str, tuple[float, Reward]]) -> Callable:
    """One reward from {name: (weight, reward)}; returns (total [n], {name: scores [n]}). nan scores add 0."""
    if not rewards:
        raise ValueError("weighted() needs at least one reward")

    def total(waves, sample_rate, prompts):
        parts = {name: np.asarray(r(waves, sample_rate, prompts), np.float32) for name, (_, r) in rewards.items()}
        out = sum(w * np.nan_to_num(parts[name], nan=0.0) for name, (w, _) in rewards.items())
        return np.asarray(out, np.float32), parts
    return total
