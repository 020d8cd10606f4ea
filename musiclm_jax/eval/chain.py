"""The stage-by-stage diagnosis (`musiclm-jax eval chain`): where between the caption and the waveform adherence is lost.

On real clips with known truth (a folder from `eval export-synthcaps`), each row replaces one more of the clip's own
tokens by the model's samples, so the first row that drops a metric names the stage that loses it:

    real         the clip itself (the ceiling; FAD: split halves of the references)
    codec        codec round trip (at the model's levels: TokenSizes.codec_levels)
    fine         fine stage sampled from the clip's own coarse codes
    acoustic     coarse + fine sampled from the clip's semantic tokens and MuLan audio tokens
    audio        the whole chain from the clip's MuLan audio tokens (what the stage LMs were trained on)
    text         the whole chain from the caption's MuLan text tokens, guidance 1
    text_guided  the same with the model's guidance (or --guidance_scale)

Every row is scored by the eval suite (`Evaluator`: tempo, key, mode, probes, MCC, FAD, tonal and pulse clarity)
with bootstrap intervals; its wavs and a prompts.jsonl stay in OUT_DIR/<row>/ for `musiclm-jax eval` or listening.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from typing import Sequence

import numpy as np

from musiclm_jax.eval.data import PROMPTS_FILE, Item
from musiclm_jax.musical_key import key_index

log = logging.getLogger("musiclm_jax.eval")

ROWS = {
    "real": "real audio",
    "codec": "codec round trip",
    "fine": "fine stage from the clip's coarse codes",
    "acoustic": "coarse + fine from the clip's semantic + MuLan-audio tokens",
    "audio": "whole chain from the clip's MuLan-audio tokens",
    "text": "whole chain from the caption's MuLan-text tokens (guidance 1)",
    "text_guided": "whole chain from the caption's MuLan-text tokens (guidance {g:g})",
}
# Columns of the table: metric key of `Evaluator.evaluate` -> header.
COLUMNS = {"tempo_acc_octave": "tempo", "key_acc": "key", "mode_acc": "mode", "instrument_acc": "instrument",
           "mcc": "MCC", "fad_mel": "FAD mel", "fad_musicnn": "FAD musicnn", "tonal_clarity": "tonal clarity",
           "pulse_clarity": "pulse clarity"}


def check_rows(rows: Sequence[str]) -> list[str]:
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise ValueError(f"unknown chain row(s) {bad}: choose from {', '.join(ROWS)}")
    return [r for r in ROWS if r in rows]   # the chain's order


def clip_tokens(model, waves: np.ndarray, sample_rate: int, duration_s: float) -> dict[str, np.ndarray]:
    """The clip's own tokens, cut to `duration_s`: mulan [b, Qm] (audio), semantic [b, Ts], codes [b, Ta, Q]."""
    if model.semantic_tokenizer is None:
        raise ValueError("the chain needs the model's semantic tokenizer (<model_dir>/semantic)")
    n_sem, n_ac = model._frames(duration_s)
    mulan = np.stack([model.mulan.tokens_from_audio(w, sample_rate) for w in waves]).astype(np.int32)
    semantic = model.semantic_tokenizer.tokens(waves, sample_rate)[:, :n_sem]
    codes = model.codec.encode(waves, sample_rate, num_levels=model.sizes.codec_levels)[:, :n_ac]
    if semantic.shape[1] < n_sem or codes.shape[1] < n_ac:
        raise ValueError(f"clips of {waves.shape[1] / sample_rate:.2f} s give {semantic.shape[1]} semantic and "
                         f"{codes.shape[1]} acoustic frames, fewer than {duration_s} s needs: lower --duration")
    return {"mulan": mulan, "semantic": semantic, "codes": codes}


# Where a tempo-conditioned model's tempo comes from (`--tempo`): "prompt": the text rows read what the caption
# states (what `generate` does), the token rows have none; "reference": every row gets the clip's true BPM (an
# oracle: how well the stages follow a tempo they are given); "none": unknown everywhere.
TEMPO_SOURCES = ("prompt", "reference", "none")


def row_tempo(model, row: str, refs: Sequence[Item], tempo: str, key: str = "prompt") -> dict:
    """The `bpm=` and `key=` keywords of one row's generation (empty: the generation's default); `key`: where a
    key-conditioned model's key comes from, from the same sources (the clip's true key and mode for "reference")."""
    for name, source in (("tempo", tempo), ("key", key)):
        if source not in TEMPO_SOURCES:
            raise ValueError(f"unknown {name} source {source!r}: choose from {', '.join(TEMPO_SOURCES)}")
    out = {}
    truth = {"bpm": lambda r: r.truth.get("bpm"),
             "key": lambda r: key_index(r.truth["key"], r.truth["mode"]) if r.truth.get("key") and r.truth.get(
                 "mode") else None}
    for name, source, has in (("bpm", tempo, model.has_tempo), ("key", key, model.has_key)):
        if not has or (source == "prompt" and row.startswith("text")):
            continue
        if source == "reference":
            out[name] = [truth[name](r) for r in refs]
        elif row.startswith("text"):
            out[name] = None
    return out


def row_waves(model, row: str, refs: Sequence[Item], tokens: dict, duration_s: float, *, seed: int,
              guidance_scale: float | None, progress: bool = False, sampling: dict | None = None,
              tempo: str = "prompt", key: str = "prompt") -> np.ndarray:
    """Waves [b, samples] of one row for a batch of reference clips (per-clip seeds: batch size does not matter).
    `sampling`: overrides of the model's temperatures / top_k / top_p for every generated row; `tempo`: one of
    TEMPO_SOURCES, and `key` the same for the key."""
    n = round(duration_s * model.sample_rate)
    if row == "codec":
        return model.codec.decode(tokens["codes"], num_samples=n)
    seeds = [seed + i for i in range(len(refs))]
    opts = dict(seed=seeds, progress=progress, **(sampling or {}), **row_tempo(model, row, refs, tempo, key))
    cq = model.sizes.coarse_levels
    if row == "fine":
        gen = model.generate_from_tokens(tokens["mulan"], duration_s, semantic=tokens["semantic"],
                                         coarse=tokens["codes"][..., :cq], **opts)
    elif row == "acoustic":
        gen = model.generate_from_tokens(tokens["mulan"], duration_s, semantic=tokens["semantic"], **opts)
    elif row == "audio":
        gen = model.generate_from_tokens(tokens["mulan"], duration_s, **opts)
    elif row == "text":
        gen = model.generate_full([r.prompt for r in refs], duration_s, guidance_scale=1.0, **opts)
    elif row == "text_guided":
        gen = model.generate_full([r.prompt for r in refs], duration_s, guidance_scale=guidance_scale, **opts)
    else:
        raise ValueError(f"row {row!r} has no generation")
    return gen.waves


def _cut(wave: np.ndarray, samples: int) -> np.ndarray:
    return wave[:samples] if wave.shape[0] >= samples else np.pad(wave, (0, samples - wave.shape[0]))


def run_chain(model, refs: Sequence[Item], out_dir: str, *, rows: Sequence[str] = tuple(ROWS),
              duration_s: float = 8.0, batch_size: int = 8, seed: int = 0, guidance_scale: float | None = None,
              progress: bool = False, sampling: dict | None = None,
              tempo: str = "prompt", key: str = "prompt") -> tuple[dict[str, list[Item]], dict]:
    """Writes OUT_DIR/<row>/<id>.wav + prompts.jsonl for every generated row; returns ({row: items}, timings).
    References shorter than `duration_s` are skipped by the caller (see `usable_references`)."""
    from musiclm_jax.audio.io import resample, write_wav

    rows = check_rows(rows)
    sr = model.sample_rate
    g = model.sampling["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    n = round(duration_s * sr)
    systems: dict[str, list[Item]] = {r: [] for r in rows}
    timings = {r: 0.0 for r in rows}
    for start in range(0, len(refs), batch_size):
        batch = list(refs[start:start + batch_size])
        waves = np.stack([_cut(resample(r.wave, r.sample_rate, sr) if r.sample_rate != sr else r.wave, n)
                          for r in batch]).astype(np.float32)
        tokens = None
        for row in rows:
            if row == "real":
                systems[row].extend(batch)
                continue
            t0 = time.perf_counter()
            if tokens is None and row != "text" and row != "text_guided":
                tokens = clip_tokens(model, waves, sr, duration_s)
            out = row_waves(model, row, batch, tokens or {}, duration_s, seed=seed + start, guidance_scale=g,
                            progress=progress, sampling=sampling, tempo=tempo, key=key)
            timings[row] += time.perf_counter() - t0
            folder = os.path.join(out_dir, row)
            os.makedirs(folder, exist_ok=True)
            for ref, wave in zip(batch, out):
                name = ref.id or f"clip{len(systems[row]):04d}"
                path = write_wav(os.path.join(folder, f"{name}.wav"), wave, sr)
                systems[row].append(Item(prompt=ref.prompt, wave=np.asarray(wave, np.float32), sample_rate=sr,
                                         id=ref.id, path=path, truth=dict(ref.truth), reference=ref.path))
        log.info("chain: %d/%d clips", min(start + batch_size, len(refs)), len(refs))
    for row, items in systems.items():
        if row == "real":
            continue
        with open(os.path.join(out_dir, row, PROMPTS_FILE), "w") as f:
            for it in items:
                f.write(json.dumps({"id": it.id, "prompt": it.prompt, "wav": os.path.basename(it.path),
                                    "reference": it.reference, **it.truth}) + "\n")
    return systems, timings


def usable_references(refs: Sequence[Item], duration_s: float, skipped) -> list[Item]:
    """References at least `duration_s` long; the others are added to `skipped` by name."""
    keep = []
    for r in refs:
        if r.wave.shape[0] / r.sample_rate + 1e-6 < duration_s:
            skipped.add(r.id or r.path, f"{r.wave.shape[0] / r.sample_rate:.2f} s is shorter than --duration "
                                        f"{duration_s:g} s")
        else:
            keep.append(r)
    return keep


def table(results: dict, guidance_scale: float) -> str:
    """Markdown: one row per chain row, each metric as value [95 % interval]."""
    present = [c for c in COLUMNS if any(results[r]["metrics"].get(c) is not None for r in results)]
    head = "| row | n | " + " | ".join(COLUMNS[c] for c in present) + " |"
    lines = [head, "|" + "---|" * (len(present) + 2)]
    for row, res in results.items():
        m, iv = res["metrics"], res["details"].get("intervals", {})
        cells = []
        for c in present:
            v = m.get(c)
            if v is None:
                cells.append("-")
                continue
            ci = iv.get(c)
            cells.append(f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.2f}")
        lines.append(f"| {row}: {ROWS[row].format(g=guidance_scale)} | {m['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnose(model, refs: Sequence[Item], out_dir: str, *, backends: dict, probes: Sequence = (),
             rows: Sequence[str] = tuple(ROWS), duration_s: float = 8.0, batch_size: int = 8, seed: int = 0,
             guidance_scale: float | None = None, bootstrap: int = 1000, skipped=None, progress: bool = False,
             sampling: dict | None = None, tempo: str = "prompt", key: str = "prompt") -> dict:
    """Runs and scores the chain; writes OUT_DIR/chain.json and chain.md; returns the JSON. `sampling` overrides
    the model's temperatures / top_k / top_p (recorded in the JSON with what the rows used); `tempo`, `key`: where a
    tempo- / key-conditioned model's tempo / key comes from (TEMPO_SOURCES)."""
    from musiclm_jax.eval.data import Skipped
    from musiclm_jax.eval.evaluate import Evaluator

    skipped = skipped if skipped is not None else Skipped()
    refs = usable_references(refs, duration_s, skipped)
    if not refs:
        raise ValueError(f"no reference clip is {duration_s:g} s or longer: lower --duration")
    os.makedirs(out_dir, exist_ok=True)
    g = model.sampling["guidance_scale"] if guidance_scale is None else float(guidance_scale)
    n = round(duration_s * model.sample_rate)
    cut_refs = [Item(prompt=r.prompt, wave=_cut(r.wave, round(duration_s * r.sample_rate)), sample_rate=r.sample_rate,
                     id=r.id, path=r.path, truth=dict(r.truth)) for r in refs]
    systems, timings = run_chain(model, cut_refs, out_dir, rows=rows, duration_s=duration_s, batch_size=batch_size,
                                 seed=seed, guidance_scale=g, progress=progress, sampling=sampling, tempo=tempo,
                                 key=key)
    ev = Evaluator(cut_refs, backends, mulan=model.mulan, probes=probes, seed=seed, bootstrap=bootstrap)
    results = {row: ev.evaluate(row, items, split_half_fad=row == "real") for row, items in systems.items()}
    report = {"rows": {r: {"description": ROWS[r].format(g=g), **results[r]} for r in results},
              "seconds": {r: round(t, 1) for r, t in timings.items()}, "clips": len(refs), "duration_s": duration_s,
              "samples": n, "guidance_scale": g,
              "sampling": {k: list(v) if k == "temperatures" else v for k, v in {
                  **{k: model.sampling[k] for k in ("temperatures", "top_k", "top_p", "guide_tempo", "guide_key",
                                                   "coarse_guidance_scale")},
                  **(sampling or {})}.items()},
              "tempo": tempo if model.has_tempo else None, "key": key if model.has_key else None, "seed": seed,
              "backends": list(backends),
              "probes": [p.attribute + ":" + p.backend for p in probes], "skipped": skipped.to_json()}
    with open(os.path.join(out_dir, "chain.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    md = table(results, g)
    with open(os.path.join(out_dir, "chain.md"), "w") as f:
        f.write(f"Stage-by-stage diagnosis: {len(refs)} clips of {duration_s:g} s, 95 % bootstrap intervals.\n\n"
                + md + "\n")
    return report


# --- does the coarse stage use its conditioning? -------------------------------------------------------------------
# Teacher-forced cross-entropy of each clip's own coarse codes under swapped conditioning. A stage that renders its
# semantic tokens in time gets worse when they are shifted; one that reads them as a bag of words (clip identity,
# key) only when they come from another clip; one that ignores them, under neither.

CONDITIONING_CASES = ("own", "semantic_shifted_later", "semantic_shifted_earlier", "semantic_of_another_clip",
                      "semantic_constant", "mulan_of_another_clip")


def stage_nll(model, stage: str, inputs, targets) -> float:
    """Mean teacher-forced NLL (nats per target token) of a stage's `targets` given its `inputs` (both as the
    stage's layout builds them): the training family's own eval (TokenLM.eval), aligned conditioning included when
    the stage LM has it."""
    import jax.numpy as jnp

    from musiclm_jax.lm.models import TokenLM

    layout, lm = model.layouts[stage], model.models[stage]
    family = TokenLM(lm.cfg, aligned=layout if lm.cfg.aligned_inputs else None)
    weight, metrics = family.eval({"model": lm}, {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets)})
    return float(metrics["loss"] / weight)


def coarse_nll(model, mulan: np.ndarray, semantic: np.ndarray, codes: np.ndarray) -> float:
    """Mean teacher-forced NLL of `codes` [b, Ta, >= Qc] given MuLan and semantic tokens (see `stage_nll`)."""
    return stage_nll(model, "coarse", *model.layouts["coarse"].build(mulan=mulan, semantic=semantic, acoustic=codes))


def conditioning_use(model, waves: np.ndarray, sample_rate: int, crop_s: float | None = None,
                     shift_s: float = 0.2) -> dict:
    """NLL of each case of `CONDITIONING_CASES` on crops of `crop_s` (default: the coarse window) of equal-length
    `waves` [b, samples] (b >= 2; "another clip" is the next one). Shifts move the semantic tokens `shift_s` later
    (the crop's first frames repeat) or earlier (cut from a longer crop). Returns {case: nll} and the differences
    from "own" ("delta_<case>")."""
    waves = np.asarray(waves, np.float32)
    if waves.ndim != 2 or len(waves) < 2:
        raise ValueError(f"conditioning_use needs a batch of at least 2 equal-length clips, got shape {waves.shape}")
    crop_s = model.windows.coarse_s if crop_s is None else crop_s
    shift = round(shift_s * model.semantic_rate)
    n_sem, n_ac = model._frames(crop_s)
    tok = clip_tokens(model, waves, sample_rate, crop_s + shift / model.semantic_rate)
    sem, mul, codes = tok["semantic"], tok["mulan"], tok["codes"][:, :n_ac]
    own = sem[:, :n_sem]
    cases = {"own": (mul, own),
             "semantic_shifted_later": (mul, np.concatenate([own[:, :1].repeat(shift, 1), own], 1)[:, :n_sem]),
             "semantic_shifted_earlier": (mul, sem[:, shift:shift + n_sem]),
             "semantic_of_another_clip": (mul, np.roll(own, 1, axis=0)),
             "semantic_constant": (mul, own[:, :1].repeat(n_sem, 1)),
             "mulan_of_another_clip": (np.roll(mul, 1, axis=0), own)}
    out = {name: coarse_nll(model, m, s, codes) for name, (m, s) in cases.items()}
    out.update({f"delta_{k}": v - out["own"] for k, v in list(out.items()) if k != "own"})
    out.update(clips=int(len(waves)), crop_s=float(crop_s), shift_s=shift / model.semantic_rate)
    return out


# --- does the semantic stage read what its MuLan tokens say? -------------------------------------------------------
# Teacher-forced NLL of each clip's own semantic tokens (one semantic window) given the MuLan tokens of the clip
# itself, of another clip, none (the guidance's unconditional prompt), and of the same clip played faster, slower
# or transposed (time-stretched / pitch-shifted by librosa: same music, one property changed). A stage that follows
# the tempo its conditioning states gets worse under the tempo-changed tokens; one that only reads genre and
# timbre, under another clip's only. `mulan_changed_*` says how many of the MuLan tokens each change altered (an
# NLL that does not move under unchanged tokens says nothing). Over a whole window the clip's own earlier tokens
# tell most of what comes next, so each case is also scored on the window's first `first_s` seconds alone
# ("<case>_first"), where the conditioning is all the stage has.

SEMANTIC_CASES = ("own", "mulan_of_another_clip", "mulan_unconditional", "mulan_of_faster_version",
                  "mulan_of_slower_version", "mulan_of_transposed_version")


def semantic_conditioning_use(model, waves: np.ndarray, sample_rate: int, *, stretch: float = 1.25,
                              semitones: float = 6.0, first_s: float = 1.0) -> dict:
    """NLL of each case of `SEMANTIC_CASES` for equal-length `waves` [b, samples] (b >= 2, at least one semantic
    window long): faster/slower = tempo x `stretch` / divided by it, transposed = `semitones` up. Returns
    {case: nll}, "<case>_first" (the first `first_s` seconds only), "delta_<case>" and "delta_<case>_first"
    (minus own) and "mulan_changed_<case>" (share of MuLan tokens that differ)."""
    import librosa

    waves = np.asarray(waves, np.float32)
    if waves.ndim != 2 or len(waves) < 2:
        raise ValueError(f"semantic_conditioning_use needs a batch of at least 2 equal-length clips, got shape "
                         f"{waves.shape}")
    if stretch <= 1.0:
        raise ValueError(f"stretch must be > 1 (the faster version's tempo factor), got {stretch}")
    crop_s = model.windows.semantic_s
    n_sem, _ = model._frames(crop_s)
    tok = clip_tokens(model, waves, sample_rate, crop_s)
    mulan, own = tok["mulan"], tok["semantic"][:, :n_sem]
    layout = model.layouts["semantic"]

    def mulan_of(fn):
        with warnings.catch_warnings():   # librosa's phase vocoder warns about its own deprecated arguments
            warnings.simplefilter("ignore", FutureWarning)
            changed = [fn(w) for w in waves]
        return np.stack([model.mulan.tokens_from_audio(w, sample_rate) for w in changed]).astype(np.int32)

    swapped = {"mulan_of_another_clip": np.roll(mulan, 1, axis=0),
               "mulan_of_faster_version": mulan_of(lambda w: librosa.effects.time_stretch(w, rate=stretch)),
               "mulan_of_slower_version": mulan_of(lambda w: librosa.effects.time_stretch(w, rate=1 / stretch)),
               "mulan_of_transposed_version": mulan_of(
                   lambda w: librosa.effects.pitch_shift(w, sr=sample_rate, n_steps=semitones))}
    inputs = np.asarray(layout.build_inputs(mulan=mulan))
    n_first = max(1, min(n_sem, round(first_s * model.semantic_rate)))
    cases = {"own": inputs, "mulan_unconditional": np.asarray(layout.uncond_inputs(inputs)),
             **{case: np.asarray(layout.build_inputs(mulan=m)) for case, m in swapped.items()}}
    out = {}
    for case, case_inputs in cases.items():
        for suffix, frames in (("", n_sem), ("_first", n_first)):
            out[case + suffix] = stage_nll(model, "semantic", case_inputs, layout.build_targets(semantic=own[:, :frames]))
    for case, m in swapped.items():
        out[f"mulan_changed_{case}"] = float(np.mean(m != mulan))
    out.update({f"delta_{k}{suffix}": out[k + suffix] - out["own" + suffix] for k in SEMANTIC_CASES[1:]
                for suffix in ("", "_first")})
    out.update(clips=int(len(waves)), crop_s=float(crop_s), first_s=n_first / model.semantic_rate,
               stretch=float(stretch), semitones=float(semitones))
    return out
