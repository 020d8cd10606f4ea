"""Melody adherence of melody-conditioned generation (`musiclm-jax eval melody`).

    sim = chroma_match(melody_wave, generated_wave, sample_rate)     # in [0, 1]
    report = evaluate_melody(lm, lines, seconds=8)                      # arms, means, 95 % intervals, paired diffs

`chroma_match` is the chroma similarity MusicGen reports for melody conditioning: both signals' STFT chroma at the
same hop, each frame quantised to its strongest pitch class, the frame-wise cosine of the one-hot vectors averaged
over frames where the melody sounds; so it is the fraction of those frames whose strongest pitch class agrees (no
transposition allowed: the melody's key is kept). The arms, for every held-out line (the melody in one sound, the
caption of the clip it came from, one seed per line):

    melody      generate(caption, melody=the line)          what melody conditioning should raise
    text        generate(caption), same seed                the text-only baseline
    random      another held-out clip's real audio          chance level for this metric
    real        the line's own clip (the full arrangement)  what a perfect arrangement of the tune scores

Text adherence of the melody and text arms (tempo within 5 %, octave-tolerant; MIREX key score; MuLan text-audio
cosine, the suite's MCC, for what the caption says about genre, instrument and mood) is reported beside it, so that
the cost to the text is visible. Intervals are percentile bootstraps over lines; paired differences are
over the same lines.
"""
from __future__ import annotations

import numpy as np

from musiclm_jax.audio.features import chroma_frames
from musiclm_jax.eval import metrics

HOP = 512


def chroma_match(melody: np.ndarray, wave: np.ndarray, sample_rate: int, hop_length: int = HOP,
                 min_level: float = 0.02) -> float:
    """Fraction of the melody's sounding frames whose strongest pitch class is the generated audio's strongest one
    (argmax-quantised chroma cosine, MusicGen's melody metric), over the shorter of the two. nan if the melody
    never sounds (frame RMS below `min_level` of its peak)."""
    melody, wave = np.asarray(melody, np.float32), np.asarray(wave, np.float32)
    n = min(len(melody), len(wave))
    if n < hop_length:
        return float("nan")
    a = chroma_frames(melody[:n], sample_rate, hop_length)
    b = chroma_frames(wave[:n], sample_rate, hop_length)
    frames = min(len(a), len(b), n // hop_length)
    rms = np.sqrt(np.mean(melody[:frames * hop_length].reshape(frames, -1) ** 2, axis=1)) if frames else np.zeros(0)
    sounding = rms > min_level * max(float(rms.max(initial=0.0)), 1e-9)
    if not sounding.any():
        return float("nan")
    return float(np.mean(a[:frames].argmax(1)[sounding] == b[:frames].argmax(1)[sounding]))


def _summary(values, seed: int) -> dict:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else None, "interval": metrics.bootstrap_interval(v, seed=seed),
            "n": int(v.size)}


def _paired(a, b, seed: int) -> dict:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return _summary(a[ok] - b[ok], seed)


def text_adherence(wave: np.ndarray, sample_rate: int, truth: dict) -> dict:
    """{"tempo": 0/1 (within 5 %, octave-tolerant), "key": MIREX score} against a clip's bpm / key / mode."""
    out = {}
    if truth.get("bpm"):
        out["tempo"] = float(metrics.tempo_correct(metrics.estimate_tempo(wave, sample_rate), float(truth["bpm"]),
                                                   octave=True))
    if truth.get("key") and truth.get("mode"):
        out["key"] = metrics.key_score(*metrics.estimate_key(wave, sample_rate), truth["key"], truth["mode"])
    return out


def evaluate_melody(lm, lines: list[dict], *, seconds: float, batch_size: int = 8, seed: int = 0,
                    progress: bool = False, **sampling) -> tuple[dict, dict]:
    """`lines`: [{"name", "melody" (float32 at `sample_rate`), "sample_rate", "caption", "real" (the clip's audio),
    "bpm"?, "key"?, "mode"?}] of held-out tunes. Returns (report, waves {arm: [n, samples]})."""
    from musiclm_jax.audio.io import resample

    if len(lines) < 2:
        raise ValueError(f"melody evaluation needs at least 2 held-out lines (one is the other's random clip), got "
                         f"{len(lines)}")
    sr = lm.sample_rate
    n_out = int(round(seconds * sr))
    fit = lambda w: np.pad(w[:n_out], (0, max(0, n_out - len(w[:n_out]))))  # noqa: E731
    melodies = [fit(resample(np.asarray(x["melody"], np.float32), int(x["sample_rate"]), sr)) for x in lines]
    reals = [fit(resample(np.asarray(x["real"], np.float32), int(x["sample_rate"]), sr)) for x in lines]
    waves = {"melody": [], "text": []}
    timings = {"melody": 0.0, "text": 0.0}
    for i in range(0, len(lines), batch_size):
        chunk = lines[i:i + batch_size]
        captions = [x["caption"] for x in chunk]
        seeds = [seed + i + j for j in range(len(chunk))]
        for arm in ("melody", "text"):
            extra = {"melody": [x["melody"] for x in chunk], "melody_sample_rate": int(chunk[0]["sample_rate"])} \
                if arm == "melody" else {}
            gen = lm.generate_full(captions, seconds, seed=seeds, progress=progress, **sampling, **extra)
            waves[arm] += list(gen.waves)
            timings[arm] += float(sum(gen.timings.values()))
    waves["random"] = [reals[(i + 1) % len(lines)] for i in range(len(lines))]
    waves["real"] = reals
    scores = {arm: [chroma_match(m, w, sr) for m, w in zip(melodies, ws)] for arm, ws in waves.items()}
    report = {"lines": len(lines), "seconds": seconds, "sample_rate": sr, "seed": seed,
              "chroma_match": {arm: _summary(v, seed) for arm, v in scores.items()},
              "melody_minus_text": _paired(scores["melody"], scores["text"], seed),
              "melody_minus_random": _paired(scores["melody"], scores["random"], seed),
              "generation_s": timings, "per_line": []}
    m, t = report["chroma_match"]["melody"]["mean"], report["chroma_match"]["text"]["mean"]
    report["ratio_melody_to_text"] = (m / t) if m is not None and t else None
    adherence = {arm: [text_adherence(w, sr, x) for w, x in zip(waves[arm], lines)] for arm in ("melody", "text")}
    captions = [x["caption"] for x in lines]
    for arm in adherence:   # MuLan text-audio cosine (the MCC of the eval suite): what the caption says beyond tempo/key
        for a, score in zip(adherence[arm], lm.mulan_scores(captions, np.stack(waves[arm]))):
            a["mulan"] = float(score)
    report["text_adherence"] = {}
    for metric in ("tempo", "key", "mulan"):
        vals = {arm: np.asarray([a.get(metric, np.nan) for a in adherence[arm]], np.float64) for arm in adherence}
        report["text_adherence"][metric] = {**{arm: _summary(v, seed) for arm, v in vals.items()},
                                            "melody_minus_text": _paired(vals["melody"], vals["text"], seed)}
    for i, x in enumerate(lines):
        report["per_line"].append({"name": x["name"], "caption": x["caption"],
                                   **{arm: scores[arm][i] for arm in scores}})
    return report, {k: np.stack(v) for k, v in waves.items()}
