"""Evaluation metrics, pure numpy / scipy (tempo and chroma use librosa). Each function says what it measures.

Inputs are embeddings / probabilities / token arrays already computed by a backend (see backends.py), so every
metric here is cheap and testable without a model.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("musiclm_jax.eval")

# --- Frechet audio distance -------------------------------------------------------------------------------------


def gaussian_stats(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [d] and (unbiased, N-1) covariance [d, d] of embeddings [N, d], in float64."""
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings [N, d] for a Gaussian fit, got shape {emb.shape}")
    return emb.mean(0), np.cov(emb, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "eigh") -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

    method "eigh" (default): tr((s1 s2)^(1/2)) = tr((s1^(1/2) s2 s1^(1/2))^(1/2)), the sum of square roots of the
    eigenvalues of a symmetric PSD matrix (negative round-off eigenvalues clipped): exact for covariances, stable
    when they are singular (N < d), and ~15x faster than sqrtm. method "sqrtm": `scipy.linalg.sqrtm(s1 @ s2)` as
    in the reference FAD/FID code; when it is not finite both covariances get `eps * I` added, and a small
    imaginary part from round-off is dropped (a large one is an error). Clamped at 0.
    """
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"embedding dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        sq1 = _psd_sqrt(s1)
        inner = sq1 @ s2 @ sq1
        tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None))))
    elif method == "sqrtm":
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
                raise ValueError(f"sqrtm gave a large imaginary part ({np.abs(covmean.imag).max():.3g})")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"unknown method {method!r}: use eigh or sqrtm")
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(value, 0.0))


def fad(emb_eval: np.ndarray, emb_ref: np.ndarray) -> float:
    """Frechet Audio Distance (Kilgour et al. 2019): the Frechet distance between Gaussian fits of the evaluated
    and the reference embedding sets. Lower is better; 0 for identical sets.

    Small-sample bias: the estimate is biased upward, roughly by a constant / N (a finite set's covariance is
    noisier, and the bias depends on the model being scored), so FADs are only comparable at equal N. Report
    `fad_at_sizes` at a fixed N, or `fad_infinity`, which extrapolates to N = infinity.

    With fewer evaluated embeddings than dimensions (N <= d) the trace term is computed in N-space:
    the nonzero eigenvalues of sigma1 sigma2 are those of X sigma2 X^T / (N - 1) (X the centred embeddings),
    which is exact and much cheaper than a d x d square root.
    """
    x = np.asarray(emb_eval, np.float64)
    mu1, s1 = gaussian_stats(x)
    mu2, s2 = gaussian_stats(emb_ref)
    if x.shape[0] > x.shape[1]:
        return frechet_distance(mu1, s1, mu2, s2)
    xc = x - mu1
    small = xc @ s2 @ xc.T / (x.shape[0] - 1)
    tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2.0), 0.0, None))))
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def fad_at_sizes(emb_eval: np.ndarray, emb_ref: np.ndarray, sizes: Sequence[int], draws: int = 5,
                 seed: int = 0) -> dict[int, float]:
    """FAD of random subsets of `emb_eval` of each size N (mean over `draws` draws without replacement) against the
    full reference fit. Sizes larger than the set or below 2 are skipped."""
    rng = np.random.default_rng(seed)
    emb_eval = np.asarray(emb_eval, np.float64)
    mu2, s2 = gaussian_stats(emb_ref)
    out = {}
    for n in sorted({int(s) for s in sizes}):
        if n < 2 or n > len(emb_eval):
            continue
        k = 1 if n == len(emb_eval) else draws
        vals = []
        for _ in range(k):
            idx = rng.choice(len(emb_eval), n, replace=False)
            if n <= emb_eval.shape[1]:
                vals.append(fad(emb_eval[idx], emb_ref))
            else:
                mu1, s1 = gaussian_stats(emb_eval[idx])
                vals.append(frechet_distance(mu1, s1, mu2, s2))
        out[n] = float(np.mean(vals))
    return out


def fad_infinity(emb_eval: np.ndarray, emb_ref: np.ndarray, num_points: int = 10, min_size: int | None = None,
                 draws: int = 5, seed: int = 0) -> dict:
    """FAD-infinity: FAD is close to linear in 1/N, FAD_N ~ FAD_inf + slope / N; fit that line to FAD of subsets at
    `num_points` sizes between `min_size` (default N/4, at least 2) and N, and report the intercept (the unbiased
    value at N = infinity). Chong & Forsyth 2020 ("Effectively unbiased FID ... FID_inf"), adapted to audio by
    Gui et al. 2024. Returns {"fad_inf", "slope", "r2", "sizes", "fads"}; needs >= 3 distinct sizes.
    """
    n = len(emb_eval)
    lo = max(2, min_size if min_size is not None else n // 4)
    sizes = sorted({int(round(s)) for s in np.linspace(lo, n, num_points)})
    fads = fad_at_sizes(emb_eval, emb_ref, sizes, draws=draws, seed=seed)
    if len(fads) < 3:
        raise ValueError(f"FAD-inf needs at least 3 distinct subset sizes; have {n} embeddings")
    x = 1.0 / np.array(list(fads), np.float64)
    y = np.array(list(fads.values()), np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    pred = intercept + slope * x
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return {"fad_inf": float(intercept), "slope": float(slope), "r2": r2,
            "sizes": [int(s) for s in fads], "fads": [float(v) for v in fads.values()]}


# --- KL divergence of class distributions ------------------------------------------------------------------------

def kl_divergence(p_ref: np.ndarray, p_gen: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-row KL(ref || gen) of class probabilities ``[n, C]``. Each row is clipped at `eps` and normalised to sum
    1 first (tag probabilities of a multilabel tagger are independent sigmoids, so this turns them into a
    distribution over tags, as in the MusicLM / AudioLDM evaluations). Returns [n] (nats)."""
    p = np.clip(np.asarray(p_ref, np.float64), eps, None)
    q = np.clip(np.asarray(p_gen, np.float64), eps, None)
    if p.shape != q.shape:
        raise ValueError(f"class probabilities differ in shape: {p.shape} vs {q.shape}")
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def kld(p_ref: np.ndarray, p_gen: np.ndarray, eps: float = 1e-6) -> float:
    """KLD: mean over prompts of KL(reference clip's class distribution || generated clip's). Lower is better."""
    return float(np.mean(kl_divergence(np.atleast_2d(p_ref), np.atleast_2d(p_gen), eps)))


# --- MuLan cycle consistency --------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mcc(text_emb: np.ndarray, audio_emb: np.ndarray) -> float:
    """MuLan Cycle Consistency: mean cosine similarity between each prompt's MuLan text embedding and the MuLan
    audio embedding of the audio generated for it (rows paired). Higher is better."""
    return float(np.mean(np.sum(_unit(text_emb) * _unit(audio_emb), axis=-1)))


def mulan_cycle_consistency(mulan, prompts: Sequence[str], waves: Sequence[np.ndarray], sample_rate: int) -> float:
    """`mcc` with a `musiclm_jax.mulan.api.MuLan` (embed_text / embed_audio)."""
    text = mulan.embed_text(list(prompts))
    audio = np.stack([mulan.embed_audio(w, sample_rate) for w in waves])
    return mcc(text, audio)


# --- tempo --------------------------------------------------------------------------------------------------------

OCTAVE_FACTORS = (1.0, 0.5, 2.0, 3.0, 1.0 / 3.0)


def estimate_tempo(wave: np.ndarray, sample_rate: int, hop_length: int = 256) -> float:
    """Global tempo in BPM from `librosa.feature.tempo` (onset-strength autocorrelation with a log-normal prior
    around 120 BPM). Not `librosa.beat.beat_track`, which crashes in this environment. 0.0 for silent audio."""
    import librosa

    wave = np.asarray(wave, np.float32)
    if wave.size == 0 or float(np.max(np.abs(wave))) < 1e-6:
        return 0.0
    return float(librosa.feature.tempo(y=wave, sr=int(sample_rate), hop_length=hop_length)[0])


def tempo_correct(estimate: float, truth: float, tolerance: float = 0.05, octave: bool = False) -> bool:
    """Strict: |est - truth| <= tolerance * truth. Octave-tolerant: the same against truth x 1/2, 2, 3 or 1/3
    (the usual 'accuracy 2' of tempo estimation)."""
    factors = OCTAVE_FACTORS if octave else (1.0,)
    return any(abs(estimate - truth * f) <= tolerance * truth * f for f in factors)


def tempo_adherence(estimates: Sequence[float], truths: Sequence[float], tolerance: float = 0.05) -> dict:
    """{"tempo_acc": strict accuracy, "tempo_acc_octave": octave-tolerant accuracy, "n"} over clips with truth."""
    pairs = [(float(e), float(t)) for e, t in zip(estimates, truths) if t is not None and float(t) > 0]
    if not pairs:
        return {"tempo_acc": None, "tempo_acc_octave": None, "n": 0}
    return {"tempo_acc": float(np.mean([tempo_correct(e, t, tolerance) for e, t in pairs])),
            "tempo_acc_octave": float(np.mean([tempo_correct(e, t, tolerance, True) for e, t in pairs])),
            "n": len(pairs)}


# --- key and mode -------------------------------------------------------------------------------------------------

def chroma_histogram(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """12-bin pitch-class energy of a clip: librosa's STFT chroma summed over time."""
    import librosa

    wave = np.asarray(wave, np.float32)
    if wave.size < 4096:
        wave = np.pad(wave, (0, 4096 - wave.size))
    chroma = librosa.feature.chroma_stft(y=wave, sr=int(sample_rate), n_fft=4096, hop_length=1024)
    return chroma.sum(axis=1)


def estimate_key(wave: np.ndarray, sample_rate: int) -> tuple[str, str]:
    """(tonic name, 'major'|'minor') by Krumhansl-Schmuckler: the best-correlating of the 24 rotated
    Krumhansl-Kessler key profiles against the clip's chroma histogram. ('', '') for silent audio."""
    from musiclm_jax.data.synthcaps import theory

    h = chroma_histogram(wave, sample_rate)
    if not np.isfinite(h).all() or h.sum() <= 0:
        return "", ""
    pc, mode = theory.estimate_key(h)
    return theory.tonic_name(pc, mode), mode


def key_score(est_tonic: str, est_mode: str, tonic: str, mode: str) -> float:
    """MIREX key score: 1 same key; 0.5 perfect fifth (either direction, same mode); 0.3 relative major/minor;
    0.2 parallel major/minor; else 0."""
    from musiclm_jax.data.synthcaps import theory

    if not est_tonic:
        return 0.0
    e, t = theory.pitch_class(est_tonic), theory.pitch_class(tonic)
    if est_mode == mode:
        if e == t:
            return 1.0
        return 0.5 if (e - t) % 12 in (5, 7) else 0.0
    if mode == "major" and est_mode == "minor" and (e - t) % 12 == 9:
        return 0.3
    if mode == "minor" and est_mode == "major" and (e - t) % 12 == 3:
        return 0.3
    return 0.2 if e == t else 0.0


def key_adherence(estimates: Sequence[tuple[str, str]], truths: Sequence[tuple[str | None, str | None]]) -> dict:
    """{"key_acc": tonic and mode both right (24 classes), "mode_acc": major/minor right, "key_mirex": mean MIREX
    score, "n"}. A truth with a key counts for key_acc and mode_acc; one with only a mode counts for mode_acc."""
    from musiclm_jax.data.synthcaps import theory

    key_hits, mirex, mode_hits = [], [], []
    for (et, em), (tt, tm) in zip(estimates, truths):
        if tm:
            mode_hits.append(em == str(tm).lower())
        if tt and tm:
            same = bool(et) and em == str(tm).lower() and theory.pitch_class(et) == theory.pitch_class(tt)
            key_hits.append(same)
            mirex.append(key_score(et, em, tt, str(tm).lower()))
    mean = lambda v: float(np.mean(v)) if v else None
    return {"key_acc": mean(key_hits), "mode_acc": mean(mode_hits), "key_mirex": mean(mirex),
            "n": len(key_hits), "n_mode": len(mode_hits)}


# --- is it music: tonal and pulse clarity ---------------------------------------------------------------------------

def tonal_clarity(wave: np.ndarray, sample_rate: int) -> float:
    """Best correlation of the clip's chroma histogram with the 24 rotated Krumhansl-Kessler key profiles, in
    [-1, 1]: high for music in a key, low for noise or a drone. 0.0 for silent audio."""
    from musiclm_jax.data.synthcaps import theory

    h = chroma_histogram(wave, sample_rate).astype(np.float64)
    if not np.isfinite(h).all() or h.sum() <= 0 or np.ptp(h) == 0:
        return 0.0
    return float(max(np.corrcoef(h, np.roll(prof, t))[0, 1]
                     for prof in (theory.KK_MAJOR, theory.KK_MINOR) for t in range(12)))


def pulse_clarity(wave: np.ndarray, sample_rate: int, hop_length: int = 256, min_bpm: float = 40.0,
                  max_bpm: float = 240.0) -> float:
    """Peak of the onset envelope's autocorrelation (normalised by lag 0) over the lags of `min_bpm`..`max_bpm`:
    near 1 for a steady beat, near 0 for audio without one. 0.0 for silent or too-short audio."""
    import librosa

    wave = np.asarray(wave, np.float32)
    if wave.size == 0 or float(np.max(np.abs(wave))) < 1e-6:
        return 0.0
    env = librosa.onset.onset_strength(y=wave, sr=int(sample_rate), hop_length=hop_length).astype(np.float64)
    env = env - env.mean()
    fps = sample_rate / hop_length
    lo, hi = int(np.floor(fps * 60.0 / max_bpm)), int(np.ceil(fps * 60.0 / min_bpm))
    if env.size <= hi or not np.any(env):
        return 0.0
    ac = np.correlate(env, env, mode="full")[env.size - 1:]
    if ac[0] <= 0:
        return 0.0
    # Unbiased: each lag averages over the overlapping part only, so long lags are not penalised.
    ac = ac / (env.size - np.arange(env.size)) / (ac[0] / env.size)
    return float(np.clip(ac[lo:hi + 1].max(), 0.0, 1.0))


# --- bootstrap intervals ------------------------------------------------------------------------------------------

def bootstrap_interval(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] | None = None,
                       num: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic` (default the mean) over items resampled with replacement.
    `values` is a sequence of per-item values, or of item indices when `statistic` reads its own arrays.
    None for fewer than two items."""
    values = np.asarray(values)
    if len(values) < 2:
        return None
    stat = statistic or (lambda v: float(np.mean(v)))
    rng = np.random.default_rng(seed)
    draws = np.array([stat(values[rng.integers(0, len(values), len(values))]) for _ in range(num)], np.float64)
    draws = draws[np.isfinite(draws)]
    if not draws.size:
        return None
    a = (1.0 - level) / 2.0
    return float(np.quantile(draws, a)), float(np.quantile(draws, 1.0 - a))


# --- attribute probes (lead instrument, genre) ---------------------------------------------------------------------

class Probe:
    """Multinomial logistic regression on standardised backend embeddings, trained on real audio with known labels.

    Persisted as .npz (weights, bias, standardisation, class names, and the backend and attribute it was fitted
    for), so a probe fitted once on SynthCaps train audio scores every system.
    """

    def __init__(self, w, b, mean, std, classes, backend: str = "", attribute: str = ""):
        self.w, self.b = np.asarray(w, np.float64), np.asarray(b, np.float64)
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.classes = [str(c) for c in classes]
        self.backend, self.attribute = str(backend), str(attribute)

    def logits(self, emb: np.ndarray) -> np.ndarray:
        return ((np.asarray(emb, np.float64) - self.mean) / self.std) @ self.w + self.b

    def predict(self, emb: np.ndarray) -> list[str]:
        return [self.classes[i] for i in np.argmax(self.logits(emb), axis=-1)]

    def save(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        np.savez(path, w=self.w, b=self.b, mean=self.mean, std=self.std, classes=np.array(self.classes),
                 backend=np.array(self.backend), attribute=np.array(self.attribute))
        return path

    @classmethod
    def load(cls, path: str) -> "Probe":
        import zipfile

        if not os.path.isfile(path):
            raise FileNotFoundError(f"probe file {path} does not exist (make one with `musiclm-jax eval fit-probe`)")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a probe file written by fit_probe (not an .npz archive)")
        try:
            z = np.load(path, allow_pickle=False)
            return cls(z["w"], z["b"], z["mean"], z["std"], z["classes"].tolist(), str(z["backend"]),
                       str(z["attribute"]))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a probe file written by fit_probe ({e})") from e


def fit_probe(emb: np.ndarray, labels: Sequence[str], l2: float = 1e-2, max_iter: int = 500,
              backend: str = "", attribute: str = "") -> Probe:
    """Fits a `Probe` (softmax regression, L2 penalty `l2` on the weights, L-BFGS) on embeddings [N, d] and string
    labels. Needs at least two classes."""
    import scipy.optimize

    x = np.asarray(emb, np.float64)
    classes = sorted({str(l) for l in labels})
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes, got {classes}")
    y = np.array([classes.index(str(l)) for l in labels])
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    n, d = xs.shape
    k = len(classes)
    onehot = np.eye(k)[y]

    def loss(theta):
        w, b = theta[:d * k].reshape(d, k), theta[d * k:]
        z = xs @ w + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        value = -np.sum(onehot * logp) / n + 0.5 * l2 * np.sum(w * w)
        g = (np.exp(logp) - onehot) / n
        return value, np.concatenate([(xs.T @ g + l2 * w).ravel(), g.sum(0)])

    res = scipy.optimize.minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_iter})
    return Probe(res.x[:d * k].reshape(d, k), res.x[d * k:], mean, std, classes, backend, attribute)


def probe_accuracy(probe: Probe, emb: np.ndarray, labels: Sequence[str | None]) -> dict:
    """{"acc": fraction of clips (with a label) whose predicted class is the label, "chance": 1 / classes, "n"}.
    Labels the probe never saw count as wrong (held-out combinations are the point of SynthCaps' test split)."""
    keep = [i for i, l in enumerate(labels) if l not in (None, "")]
    if not keep:
        return {"acc": None, "chance": 1.0 / len(probe.classes), "n": 0}
    pred = probe.predict(np.asarray(emb)[keep])
    acc = float(np.mean([p == str(labels[i]) for p, i in zip(pred, keep)]))
    return {"acc": acc, "chance": 1.0 / len(probe.classes), "n": len(keep)}


# --- diversity ----------------------------------------------------------------------------------------------------

def pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Mean of 1 - cos over all distinct pairs of rows of [k, d] (k >= 2)."""
    u = _unit(emb)
    k = len(u)
    if k < 2:
        raise ValueError("diversity needs at least 2 samples")
    sims = u @ u.T
    return float(np.mean(1.0 - sims[np.triu_indices(k, 1)]))


def diversity(emb: np.ndarray, groups: Sequence) -> dict:
    """Diversity: for each prompt (group) with >= 2 samples, the mean pairwise cosine distance among its samples'
    embeddings; averaged over prompts. 0 when every sample of a prompt is the same. {"diversity", "prompts"}."""
    emb = np.asarray(emb)
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    vals = [pairwise_cosine_distance(emb[idx]) for idx in by_group.values() if len(idx) >= 2]
    return {"diversity": float(np.mean(vals)) if vals else None, "prompts": len(vals)}


# --- memorization of semantic tokens ------------------------------------------------------------------------------

_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def _windows(seq: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    seq = np.asarray(seq).reshape(-1)
    if seq.shape[0] < length:
        return np.zeros((0, length), seq.dtype)
    return np.lib.stride_tricks.sliding_window_view(seq, length)[::stride]


def _hash_windows(w: np.ndarray) -> np.ndarray:
    """64-bit polynomial hashes of rows of an int matrix (wrapping uint64 arithmetic)."""
    h = np.zeros(len(w), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(w.shape[1]):
            h = h * _HASH_MULT + (w[:, j].astype(np.uint64) + np.uint64(1))
    return h


def exact_matches(generated: Sequence[np.ndarray], training: Sequence[np.ndarray], length: int) -> dict:
    """Exact memorization: a generated sequence *matches* when any of its windows of `length` tokens occurs verbatim
    in some training sequence. Training windows (every offset) are hashed to 64 bits, generated windows looked up by
    binary search, and each hash hit is confirmed by comparing the tokens (no false positives from collisions).
    Returns {"exact_match_rate": fraction of generated sequences with a match, "matched_windows": fraction of
    generated windows, "n", "window"}."""
    train_w = [_windows(t, length) for t in training]
    owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(train_w)]) if train_w else np.zeros(0, int)
    offset = np.concatenate([np.arange(len(w)) for w in train_w]) if train_w else np.zeros(0, int)
    hashes = np.concatenate([_hash_windows(w) for w in train_w]) if train_w else np.zeros(0, np.uint64)
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    seq_hits, win_hits, total = [], 0, 0
    for g in generated:
        gw = _windows(g, length)
        total += len(gw)
        hit = False
        if len(gw) and len(sorted_h):
            gh = _hash_windows(gw)
            pos = np.searchsorted(sorted_h, gh)
            cand = np.nonzero((pos < len(sorted_h)) & (sorted_h[np.minimum(pos, len(sorted_h) - 1)] == gh))[0]
            for i in cand:
                j = pos[i]
                while j < len(sorted_h) and sorted_h[j] == gh[i]:
                    t = order[j]
                    if np.array_equal(train_w[owner[t]][offset[t]], gw[i]):
                        win_hits += 1
                        hit = True
                        break
                    j += 1
        seq_hits.append(hit)
    return {"exact_match_rate": float(np.mean(seq_hits)) if seq_hits else None,
            "matched_windows": win_hits / total if total else None, "n": len(seq_hits), "window": length}


def approximate_matches(generated: Sequence[np.ndarray], training: Sequence[np.ndarray], length: int,
                        threshold: float = 0.5, stride: int | None = None, train_stride: int = 1,
                        chunk: int = 2048) -> dict:
    """Approximate memorization: each generated window of `length` tokens (every `stride`, default `length`) is
    compared with every training window (every `train_stride`) by normalised Hamming distance (fraction of
    positions that differ); the window is an approximate match when its nearest training window is closer than
    `threshold`. Brute force over chunks in numpy: O(generated windows x training windows x length).
    Returns {"approx_match_rate": fraction of generated windows, "mean_nearest_hamming", "n_windows", ...}."""
    stride = stride or length
    train = [_windows(t, length, train_stride) for t in training]
    train = np.concatenate(train) if train else np.zeros((0, length), np.int32)
    gen = [_windows(g, length, stride) for g in generated]
    gen = np.concatenate(gen) if gen else np.zeros((0, length), np.int32)
    if len(gen) == 0 or len(train) == 0:
        return {"approx_match_rate": None, "mean_nearest_hamming": None, "n_windows": int(len(gen)),
                "window": length, "threshold": threshold}
    nearest = np.full(len(gen), length, np.int64)
    dtype = np.int16 if max(gen.max(), train.max()) < 2 ** 15 else np.int32
    gen, train = gen.astype(dtype), train.astype(dtype)
    step = max(1, chunk * 64 // max(length, 1))
    for i in range(0, len(gen), 64):
        g = gen[i:i + 64]
        best = np.full(len(g), length, np.int64)
        for j in range(0, len(train), step):
            d = (g[:, None, :] != train[None, j:j + step, :]).sum(-1)
            best = np.minimum(best, d.min(1))
        nearest[i:i + 64] = best
    frac = nearest / float(length)
    return {"approx_match_rate": float(np.mean(frac < threshold)), "mean_nearest_hamming": float(frac.mean()),
            "n_windows": int(len(gen)), "window": length, "threshold": threshold}


def memorization_prompts(training: Sequence[np.ndarray], prompt_tokens: int = 250, continuation_tokens: int = 125,
                         limit: int | None = None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The paper's memorization protocol (MusicLM sec. 5.5): training examples whose first `prompt_tokens` semantic
    tokens (10 s at 25 Hz) are the prompt and whose next `continuation_tokens` (5 s) the target. Returns
    [(prompt, target, training index)] for sequences long enough, a random `limit` of them."""
    idx = [i for i, t in enumerate(training) if len(np.asarray(t).reshape(-1)) >= prompt_tokens + continuation_tokens]
    if limit is not None and len(idx) > limit:
        idx = sorted(np.random.default_rng(seed).choice(idx, limit, replace=False).tolist())
    out = []
    for i in idx:
        t = np.asarray(training[i]).reshape(-1)
        out.append((t[:prompt_tokens], t[prompt_tokens:prompt_tokens + continuation_tokens], i))
    return out


def prompted_memorization(continuations: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                          threshold: float = 0.5) -> dict:
    """Scores greedy continuations of `memorization_prompts` against the training targets: exact match when all
    tokens equal the target; approximate match when the normalised Hamming distance is below `threshold`.
    {"exact_match_rate", "approx_match_rate", "mean_hamming", "n"}."""
    ham = []
    for c, t in zip(continuations, targets):
        c, t = np.asarray(c).reshape(-1), np.asarray(t).reshape(-1)
        n = min(len(c), len(t))
        ham.append(1.0 if n == 0 else float(np.mean(c[:n] != t[:n])) + (len(t) - n) / max(len(t), 1))
    ham = np.array(ham)
    if not len(ham):
        return {"exact_match_rate": None, "approx_match_rate": None, "mean_hamming": None, "n": 0}
    return {"exact_match_rate": float(np.mean(ham == 0)), "approx_match_rate": float(np.mean(ham < threshold)),
            "mean_hamming": float(ham.mean()), "n": int(len(ham))}


def run_prompted_memorization(generate_fn: Callable[[np.ndarray], np.ndarray], training: Sequence[np.ndarray],
                              prompt_tokens: int = 250, continuation_tokens: int = 125, limit: int | None = 100,
                              threshold: float = 0.5, seed: int = 0) -> dict:
    """The whole protocol: `generate_fn(prompt) -> continuation tokens` (greedy decoding of the semantic stage
    conditioned on the example's MuLan tokens) for `limit` training examples, scored by `prompted_memorization`."""
    items = memorization_prompts(training, prompt_tokens, continuation_tokens, limit, seed)
    return prompted_memorization([generate_fn(p) for p, _, _ in items], [t for _, t, _ in items], threshold)
