"""Scores systems (lists of `Item`s) against a reference set with every metric that the inputs allow.

Each metric is computed only where its inputs exist (KLD needs a classifying backend and paired references; MCC a
MuLan; adherence truth fields; probes a probe file; memorization tokens and a training collection) and is None
otherwise, so one report covers a bare folder of wavs as well as a SynthCaps evaluation with everything.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np

from musiclm_jax.eval import metrics as M
from musiclm_jax.eval.backends import can_classify, get_backend
from musiclm_jax.eval.data import Item

log = logging.getLogger("musiclm_jax.eval")


def _by_rate(backend, items: Sequence[Item], fn: str) -> np.ndarray:
    """backend.embed / classify over items of mixed sample rates, in item order."""
    out: list = [None] * len(items)
    rates: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        rates.setdefault(int(it.sample_rate), []).append(i)
    for sr, idx in rates.items():
        res = np.asarray(getattr(backend, fn)([items[i].wave for i in idx], sr), np.float32)
        for k, i in enumerate(idx):
            out[i] = res[k]
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def _real(path: str | None) -> str | None:
    return os.path.realpath(path) if path else None


class Evaluator:
    """Holds the reference set, the backends and the optional models; `evaluate(name, items)` scores one system.

    backends: {spec: Backend}. probes: list of `metrics.Probe` (their backend spec names the embedding they read).
    mulan: a `MuLan` for MCC. train_tokens: training semantic-token sequences for memorization.
    bootstrap: resamples for 95 % intervals (details["intervals"]: {metric: [lo, hi]}) of the per-item metrics and
    MCC; 0 for none. FAD has none: resampling with replacement duplicates clips, which biases FAD upward.
    """

    def __init__(self, references: Sequence[Item], backends: dict, *, mulan=None, probes: Sequence = (),
                 train_tokens: Sequence[np.ndarray] | None = None, mem_window: int = 125,
                 mem_threshold: float = 0.5, fad_sizes: Sequence[int] = (), seed: int = 0, bootstrap: int = 0):
        self.refs = list(references)
        self.backends = dict(backends)
        self.mulan = mulan
        self.probes = list(probes)
        for p in self.probes:
            if p.backend not in self.backends:
                self.backends[p.backend] = get_backend(p.backend)
        self.names: dict[str, str] = {}          # spec -> name used in metric keys (unique)
        for spec, backend in self.backends.items():
            name = getattr(backend, "name", spec.split(":")[0])
            self.names[spec] = name if name not in self.names.values() else f"{name}{len(self.names)}"
        self.train_tokens = train_tokens
        self.mem_window, self.mem_threshold = mem_window, mem_threshold
        self.fad_sizes, self.seed, self.bootstrap = tuple(fad_sizes), seed, int(bootstrap)
        self._ref_path = {_real(r.path): i for i, r in enumerate(self.refs)}
        self._ref_id = {r.id: i for i, r in enumerate(self.refs) if r.id}
        self._ref_prompt = {}
        for i, r in enumerate(self.refs):
            self._ref_prompt.setdefault(r.prompt, i)
        self._cache: dict = {}
        self._estimates: dict = {}

    def _estimate(self, kind: str, item: Item):
        """Tempo / key estimates, cached per audio file (the real baseline re-reads the references)."""
        key = (kind, _real(item.path) if item.path and os.path.exists(item.path) else id(item.wave),
               len(item.wave), item.sample_rate)
        if key not in self._estimates:
            fn = {"tempo": M.estimate_tempo, "key": M.estimate_key, "tonal": M.tonal_clarity,
                  "pulse": M.pulse_clarity}[kind]
            self._estimates[key] = fn(item.wave, item.sample_rate)
        return self._estimates[key]

    # -- pairing -----------------------------------------------------------------------------------------------
    def pair(self, item: Item) -> int | None:
        """Index of the reference clip an item was generated for: by its "reference" path, else id, else prompt."""
        if item.reference and _real(item.reference) in self._ref_path:
            return self._ref_path[_real(item.reference)]
        if item.id and item.id in self._ref_id:
            return self._ref_id[item.id]
        return self._ref_prompt.get(item.prompt)

    def truth(self, item: Item) -> dict:
        j = self.pair(item)
        return dict(self.refs[j].truth if j is not None else {}, **item.truth)

    def ref_features(self, spec: str, fn: str) -> np.ndarray:
        key = (spec, fn)
        if key not in self._cache:
            self._cache[key] = _by_rate(self.backends[spec], self.refs, fn)
        return self._cache[key]

    # -- one system --------------------------------------------------------------------------------------------
    def evaluate(self, name: str, items: Sequence[Item], split_half_fad: bool = False) -> dict:
        """{"metrics": flat {metric: value or None}, "details": {...}}. `split_half_fad` (the real-audio ceiling):
        FAD between two random halves of the reference set instead of items vs references."""
        items = list(items)
        out: dict = {"n": len(items)}
        details: dict = {}
        hits: dict[str, list] = {}          # metric -> per-item values whose mean is the metric (for intervals)
        spread: dict[str, Callable] = {}    # metric -> statistic over resampled item indices (FAD, MCC)
        pairs = [self.pair(it) for it in items]
        paired = [(i, j) for i, j in enumerate(pairs) if j is not None]
        out["n_paired"] = len(paired)
        groups = [it.prompt for it in items]
        for spec, backend in self.backends.items():
            bname = self.names[spec]
            emb = _by_rate(backend, items, "embed") if items else np.zeros((0, 1))
            ref = self.ref_features(spec, "embed")
            fad_key, inf_key = f"fad_{bname}", f"fad_inf_{bname}"
            out[fad_key] = out[inf_key] = None
            try:
                if split_half_fad:
                    perm = np.random.default_rng(self.seed).permutation(len(ref))
                    half = len(ref) // 2
                    out[fad_key] = M.fad(ref[perm[:half]], ref[perm[half:]])
                elif len(emb) >= 2 and len(ref) >= 2:
                    out[fad_key] = M.fad(emb, ref)
                    if self.fad_sizes:
                        details[f"fad_at_sizes_{bname}"] = M.fad_at_sizes(emb, ref, self.fad_sizes, seed=self.seed)
                    if len(emb) >= 6:
                        inf = M.fad_infinity(emb, ref, seed=self.seed)
                        out[inf_key] = inf["fad_inf"]
                        details[inf_key] = inf
            except ValueError as e:
                log.warning("eval: %s: FAD (%s) not computed: %s", name, bname, e)
            div = M.diversity(emb, groups) if len(emb) else {"diversity": None, "prompts": 0}
            out[f"diversity_{bname}"] = div["diversity"]
            if can_classify(backend):
                out[f"kld_{bname}"] = None
                if paired:
                    probs = _by_rate(backend, [items[i] for i, _ in paired], "classify")
                    ref_probs = self.ref_features(spec, "classify")[[j for _, j in paired]]
                    out[f"kld_{bname}"] = M.kld(ref_probs, probs)
            for probe in self.probes:
                if probe.backend != spec:
                    continue
                labels = [self.truth(it).get(probe.attribute) for it in items]
                res = M.probe_accuracy(probe, emb, labels) if len(emb) else {"acc": None, "n": 0}
                out[f"{probe.attribute}_acc"] = res["acc"]
                keep = [i for i, l in enumerate(labels) if l not in (None, "")]
                if keep:
                    pred = probe.predict(np.asarray(emb)[keep])
                    hits[f"{probe.attribute}_acc"] = [p == str(labels[i]) for p, i in zip(pred, keep)]
                details[f"{probe.attribute}_probe"] = res
        if self.mulan is not None and items:
            audio = np.stack([self.mulan.embed_audio(it.wave, it.sample_rate) for it in items])
            text = self.mulan.embed_text([it.prompt for it in items])
            out["mcc"] = M.mcc(text, audio)
            spread["mcc"] = lambda idx: M.mcc(text[idx], audio[idx])
        if items:
            for kind in ("tonal", "pulse"):
                vals = [self._estimate(kind, it) for it in items]
                out[f"{kind}_clarity"] = float(np.mean(vals))
                hits[f"{kind}_clarity"] = vals
        truths = [self.truth(it) for it in items]
        if any("bpm" in t for t in truths):
            idx = [i for i, t in enumerate(truths) if "bpm" in t]
            est = [self._estimate("tempo", items[i]) for i in idx]
            res = M.tempo_adherence(est, [truths[i]["bpm"] for i in idx])
            out["tempo_acc"], out["tempo_acc_octave"] = res["tempo_acc"], res["tempo_acc_octave"]
            valid = [(e, truths[i]["bpm"]) for e, i in zip(est, idx) if truths[i]["bpm"] and truths[i]["bpm"] > 0]
            hits["tempo_acc"] = [M.tempo_correct(e, t) for e, t in valid]
            hits["tempo_acc_octave"] = [M.tempo_correct(e, t, octave=True) for e, t in valid]
            details["tempo"] = dict(res, estimates=[round(e, 2) for e in est])
        if any("mode" in t for t in truths):
            idx = [i for i, t in enumerate(truths) if "mode" in t]
            est = [self._estimate("key", items[i]) for i in idx]
            res = M.key_adherence(est, [(truths[i].get("key"), truths[i]["mode"]) for i in idx])
            out["key_acc"], out["mode_acc"], out["key_mirex"] = res["key_acc"], res["mode_acc"], res["key_mirex"]
            per = [M.key_adherence([e], [(truths[i].get("key"), truths[i]["mode"])]) for e, i in zip(est, idx)]
            for metric in ("key_acc", "mode_acc"):
                hits[metric] = [p[metric] for p in per if p[metric] is not None]
            details["key"] = dict(res, estimates=[" ".join(e) for e in est])
        if self.train_tokens is not None:
            gen = [it.tokens for it in items if it.tokens is not None]
            if gen:
                ex = M.exact_matches(gen, self.train_tokens, self.mem_window)
                ap = M.approximate_matches(gen, self.train_tokens, self.mem_window, self.mem_threshold)
                out["mem_exact"], out["mem_approx"] = ex["exact_match_rate"], ap["approx_match_rate"]
                details["memorization"] = {"exact": ex, "approximate": ap}
        if self.bootstrap:
            details["intervals"] = self.intervals(hits, spread, len(items))
        return {"metrics": out, "details": details}

    def intervals(self, hits: dict, spread: dict, n: int) -> dict:
        """{metric: [lo, hi]}: 95 % bootstrap intervals over items (MCC recomputed per resample)."""
        res = {}
        for metric, vals in hits.items():
            ci = M.bootstrap_interval(np.asarray(vals, np.float64), num=self.bootstrap, seed=self.seed)
            if ci is not None:
                res[metric] = [round(ci[0], 4), round(ci[1], 4)]
        for metric, stat in spread.items():
            ci = M.bootstrap_interval(np.arange(n), stat, num=self.bootstrap, seed=self.seed)
            if ci is not None:
                res[metric] = [round(ci[0], 4), round(ci[1], 4)]
        return res
