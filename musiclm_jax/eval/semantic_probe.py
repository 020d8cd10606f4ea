"""Linear probes: how much musical information do w2v-BERT features and semantic tokens carry? (issue #6)

Each clip becomes one vector per feature extractor, and a logistic-regression probe (`eval.metrics.fit_probe`:
softmax regression on standardised inputs, L2 1e-2, L-BFGS) is fitted on the training clips' vectors to predict a
SynthCaps attribute, then scored on the test clips (accuracy). Extractors:

* w2v-BERT features: frame features of the tokenizer's layer (25 Hz), pooled over frames as mean and std [2 D];
* token histogram: the frames' k-means ids counted over the K clusters and normalised to sum 1 [K];
* MFCC: `librosa.feature.mfcc` (20 coefficients), mean and std over frames [40] -- the no-learning baseline;
* the same two for a randomly initialised w2v-BERT of the same config (fresh params, `random_init_tokenizer`),
  with its own k-means fitted on the features of the training split (same K as the trained one's; mini-batch,
  100 steps): what the architecture alone gives, without training.

Attributes (`LABELS`): genre, tempo bucket (slow < 90 <= medium <= 130 < fast BPM; SynthCaps BPMs span 60-160),
tonic (12 pitch classes, enharmonic spellings merged), key (24: tonic + mode), mode, lead instrument.
"Chance" is the majority class of the training labels scored on the test labels.

Two protocols: `probe_table(train, test, extractors)` scores a given split (SynthCaps' test split holds out whole
genre x lead-instrument combinations, so genre / instrument labels of a test clip come in combinations never seen
in training and every extractor may look poor there); `probe_table_random` splits the training clips per attribute
75/25, stratified by the attribute and grouped by score (SynthCaps renders each score with two soundfonts; both
renderings stay on the same side, so the probe cannot just recognise the score).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from musiclm_jax.eval.metrics import fit_probe, probe_accuracy

TEMPO_BUCKETS = ((90.0, "slow"), (130.0, "medium"))   # < 90 slow, 90..130 medium, > 130 fast
ATTRIBUTES = ("genre", "tempo", "tonic", "key", "mode", "instrument")
NUM_MFCC = 20


# --- labels --------------------------------------------------------------------------------------------------------

def tempo_bucket(bpm) -> str | None:
    if bpm is None or not np.isfinite(float(bpm)) or float(bpm) <= 0:
        return None
    bpm = float(bpm)
    if bpm < TEMPO_BUCKETS[0][0]:
        return "slow"
    return "medium" if bpm <= TEMPO_BUCKETS[1][0] else "fast"


def _str(v) -> str | None:
    if isinstance(v, bytes):
        v = v.decode()
    return None if v is None or str(v).strip() == "" else str(v).strip()


def _tonic(clip: dict) -> str | None:
    from musiclm_jax.data.synthcaps import theory

    name = _str(clip.get("key"))
    if name is None:
        return None
    try:
        return theory.SHARP_NAMES[theory.pitch_class(name)]
    except ValueError:
        return None


def _key(clip: dict) -> str | None:
    tonic, mode = _tonic(clip), _str(clip.get("mode"))
    return f"{tonic} {mode}" if tonic and mode else None


LABELS: dict[str, Callable[[dict], str | None]] = {
    "genre": lambda c: _str(c.get("genre")),
    "tempo": lambda c: tempo_bucket(c.get("bpm")),
    "tonic": _tonic,
    "key": _key,
    "mode": lambda c: _str(c.get("mode")),
    "instrument": lambda c: _str(c.get("lead_instrument", c.get("instrument"))),
}


def labels(clips: Sequence[dict], attribute: str) -> list[str | None]:
    """The attribute's label of every clip (None where the clip does not say)."""
    if attribute not in LABELS:
        raise ValueError(f"unknown probe attribute {attribute!r}: use some of {', '.join(LABELS)}")
    return [LABELS[attribute](c) for c in clips]


# --- feature extractors ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Extractor:
    """`fn(waves, sample_rate) -> [N, d]`: one vector per clip."""
    name: str
    fn: Callable[[Sequence[np.ndarray], int], np.ndarray]


def mfcc_extractor(n_mfcc: int = NUM_MFCC) -> Extractor:
    def fn(waves, sample_rate):
        import librosa

        out = []
        for w in waves:
            m = librosa.feature.mfcc(y=np.asarray(w, np.float32), sr=int(sample_rate), n_mfcc=n_mfcc)
            out.append(np.concatenate([m.mean(1), m.std(1)]))
        return np.stack(out)
    return Extractor("MFCC", fn)


def random_init_tokenizer(cfg, seed: int = 0, **kwargs):
    """A `SemanticTokenizer` over a w2v-BERT of config `cfg` with freshly initialised parameters (no k-means)."""
    from flax import nnx

    from musiclm_jax.semantic.api import SemanticTokenizer
    from musiclm_jax.semantic.w2v_bert import new_model

    return SemanticTokenizer(new_model(cfg, nnx.Rngs(seed)), None, f"random-init-{seed}", **kwargs)


class FrameFeatures:
    """Frame features [T, D] of each wave from a tokenizer, computed once per wave object (cached by id); with
    `tokens`, what its k-means clusters (`token_features`: with chroma when the tokenizer adds it)."""

    def __init__(self, tok, tokens: bool = False):
        self.tok, self._cache = tok, {}
        self._fn = tok.token_features if tokens else tok.features

    def __call__(self, waves: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        todo = [w for w in waves if id(w) not in self._cache]
        by_len: dict[int, list] = {}
        for w in todo:
            by_len.setdefault(len(w), []).append(w)
        for group in by_len.values():  # equal lengths: one batched call
            for i in range(0, len(group), 64):
                part = group[i:i + 64]
                for w, f in zip(part, self._fn(np.stack(part), sample_rate)):
                    self._cache[id(w)] = (w, f)
        return [self._cache[id(w)][1] for w in waves]


def pooled(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Mean and std over frames: [N, 2 D]."""
    return np.stack([np.concatenate([f.mean(0), f.std(0)]) for f in frames]).astype(np.float64)


def histogram(ids: Sequence[np.ndarray], num_clusters: int) -> np.ndarray:
    """Token counts over the clusters, normalised to sum 1: [N, K]."""
    h = np.stack([np.bincount(np.asarray(t).reshape(-1), minlength=num_clusters)[:num_clusters] for t in ids])
    return h / np.maximum(h.sum(1, keepdims=True), 1)


def w2v_bert_extractors(tok, name: str, kmeans_fit_waves: Sequence[np.ndarray] | None = None,
                        num_clusters: int | None = None, sample_rate: int = 16000, seed: int = 0,
                        num_steps: int = 100) -> list[Extractor]:
    """Pooled features and (when the tokenizer has a k-means, or `kmeans_fit_waves` and `num_clusters` are given:
    one is fitted on their features) the token histogram of tokenizer `tok`; frame features are computed once."""
    frames = FrameFeatures(tok)
    token_frames = FrameFeatures(tok, tokens=True) if tok.chroma_weight else frames
    out = [Extractor(f"{name} features", lambda waves, sr: pooled(frames(waves, sr)))]
    kmeans = {"model": tok.kmeans}
    if kmeans["model"] is None and not (kmeans_fit_waves and num_clusters):
        return out

    def get_kmeans():
        if kmeans["model"] is None:
            from musiclm_jax.quantization.kmeans import KMeansConfig, fit

            feats = np.concatenate(token_frames(kmeans_fit_waves, sample_rate))
            cfg = KMeansConfig(num_clusters=num_clusters, batch_size=min(4096, len(feats)), num_steps=num_steps,
                               init_samples=min(len(feats), max(4 * num_clusters, 4096)), seed=seed)
            kmeans["model"] = fit(feats, cfg, fingerprint=tok.fingerprint)
        return kmeans["model"]

    def hist(waves, sr):
        km = get_kmeans()
        return histogram([km.predict(f) for f in token_frames(waves, sr)], km.num_clusters)

    out.append(Extractor(f"{name} token histogram", hist))
    return out


# --- probes --------------------------------------------------------------------------------------------------------

def _majority_accuracy(train_labels, test_labels) -> float | None:
    train = [l for l in train_labels if l is not None]
    test = [l for l in test_labels if l is not None]
    if not train or not test:
        return None
    values, counts = np.unique(train, return_counts=True)
    majority = values[np.argmax(counts)]
    return float(np.mean([l == majority for l in test]))


def _check_labels(attribute: str, train_labels: list) -> None:
    known = [l for l in train_labels if l is not None]
    if not known:
        raise ValueError(f"no clip has a {attribute!r} label: probes need SynthCaps attributes "
                         "(use --synthcaps, not --audio_dir)")
    classes = sorted(set(known))
    if len(classes) < 2:
        raise ValueError(f"attribute {attribute!r} has one class ({classes[0]!r}) in the training clips: "
                         "a probe needs at least two; drop it with --attributes or use more clips")


def _score_rows(feats: dict[str, np.ndarray], all_labels: dict[str, list], splits: dict[str, tuple],
                l2: float) -> list[dict]:
    rows = []
    for name, x in feats.items():
        row = {"features": name, "dim": int(x.shape[1])}
        for attr, (tr, te) in splits.items():
            lab = all_labels[attr]
            tr = [i for i in tr if lab[i] is not None]
            probe = fit_probe(x[tr], [lab[i] for i in tr], l2=l2, attribute=attr)
            row[attr] = probe_accuracy(probe, x[te], [lab[i] for i in te])["acc"]
        rows.append(row)
    chance = {"features": "chance (majority class)", "dim": 0}
    for attr, (tr, te) in splits.items():
        lab = all_labels[attr]
        chance[attr] = _majority_accuracy([lab[i] for i in tr], [lab[i] for i in te])
    rows.append(chance)
    return rows


def _extract(clips: Sequence[dict], extractors: Sequence[Extractor], sample_rate: int) -> dict[str, np.ndarray]:
    waves = [np.asarray(c["audio"], np.float32) for c in clips]
    feats = {}
    for ex in extractors:
        x = np.asarray(ex.fn(waves, sample_rate), np.float64)
        if x.shape[0] != len(clips) or not np.all(np.isfinite(x)):
            raise ValueError(f"extractor {ex.name!r} gave {x.shape} (finite: {np.all(np.isfinite(x))}) for "
                             f"{len(clips)} clips")
        feats[ex.name] = x
    return feats


def _check_clips(clips: Sequence[dict], what: str) -> None:
    if not clips:
        raise ValueError(f"no {what} clips: a probe needs clips with SynthCaps labels on both sides of the split")


def probe_table(train_clips: Sequence[dict], test_clips: Sequence[dict], extractors: Sequence[Extractor],
                attributes: Sequence[str] = ATTRIBUTES, sample_rate: int = 16000, l2: float = 1e-2) -> list[dict]:
    """Probes fitted on `train_clips`, scored on `test_clips` (dicts with "audio" at `sample_rate` and SynthCaps
    attribute fields). Rows: one per extractor, then chance: {"features", "dim", <attribute>: accuracy}."""
    _check_clips(train_clips, "training")
    _check_clips(test_clips, "test")
    clips = list(train_clips) + list(test_clips)
    all_labels = {a: labels(clips, a) for a in attributes}
    tr, te = list(range(len(train_clips))), list(range(len(train_clips), len(clips)))
    for a in attributes:
        _check_labels(a, [all_labels[a][i] for i in tr])
    return _score_rows(_extract(clips, extractors, sample_rate), all_labels, {a: (tr, te) for a in attributes}, l2)


def stratified_group_split(labels_: Sequence[str | None], groups: Sequence, test_fraction: float = 0.25,
                           seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, test) of the labelled items: per class, a `test_fraction` of its groups (at least one when
    the class has two or more groups) go to test; a group never straddles the split. Deterministic by seed."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, dict] = {}
    for i, (l, g) in enumerate(zip(labels_, groups)):
        if l is not None:
            by_class.setdefault(l, {}).setdefault(g, []).append(i)
    train, test, seen = [], [], set()
    for cls in sorted(by_class):
        gs = [g for g in by_class[cls] if g not in seen]
        seen.update(gs)
        order = [gs[k] for k in rng.permutation(len(gs))]
        n_test = int(round(test_fraction * len(order)))
        n_test = max(n_test, 1) if len(order) >= 2 else 0
        for k, g in enumerate(order):
            (test if k < n_test else train).extend(by_class[cls][g])
    return sorted(train), sorted(test)


def probe_table_random(clips: Sequence[dict], extractors: Sequence[Extractor], attributes: Sequence[str] = ATTRIBUTES,
                       sample_rate: int = 16000, test_fraction: float = 0.25, seed: int = 0,
                       l2: float = 1e-2) -> list[dict]:
    """Like `probe_table` on a random split of `clips`: per attribute, stratified by it, grouped by "score_id"."""
    _check_clips(clips, "")
    all_labels = {a: labels(clips, a) for a in attributes}
    groups = [c.get("score_id", i) or i for i, c in enumerate(clips)]
    splits = {}
    for a in attributes:
        _check_labels(a, all_labels[a])
        splits[a] = stratified_group_split(all_labels[a], groups, test_fraction, seed)
        if not splits[a][1]:
            raise ValueError(f"attribute {a!r}: too few clips for a test part (every class has one score)")
    return _score_rows(_extract(clips, extractors, sample_rate), all_labels, splits, l2)


# --- frame probes: what one 25 Hz token says about its own frame ----------------------------------------------------
# Pooled vectors cannot show rhythm or melody, which is what the coarse stage needs from its semantic tokens. Two
# time-resolved probes read the token stream itself: the pitch class of each frame (argmax of chroma_cqt, predicted
# by the majority class of its token in the training clips; chance = the majority pitch class) and onset frames
# (the clip's top 15 % onset strength, scored by how often the frame's token bigram starts an onset in training;
# ROC AUC, chance 0.5). Token sources: the tokenizer, a random-init w2v-BERT with its own k-means, and k-means of
# log-mel frames (a no-learning baseline with the same number of clusters).

ONSET_QUANTILE = 0.85


def frame_targets(wave: np.ndarray, sample_rate: int, frame_rate: float, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(pitch class [frames] int, onset flag [frames] bool) of a mono wave at `frame_rate`."""
    import librosa

    hop = int(round(sample_rate / frame_rate))
    wave = np.asarray(wave, np.float32)
    chroma = librosa.feature.chroma_cqt(y=wave, sr=sample_rate, hop_length=hop)
    onset = librosa.onset.onset_strength(y=wave, sr=sample_rate, hop_length=hop)
    n = min(frames, chroma.shape[1], len(onset))
    onset = onset[:n]
    return chroma[:, :n].argmax(0), onset > np.quantile(onset, ONSET_QUANTILE)


def pitch_class_accuracy(train_ids, train_pc, test_ids, test_pc, num_tokens: int) -> float:
    """Accuracy of predicting each test frame's pitch class by its token's majority class in training."""
    table = np.zeros((num_tokens, 12))
    np.add.at(table, (np.concatenate(train_ids), np.concatenate(train_pc)), 1)
    pred = table.argmax(1)
    return float(np.mean(pred[np.concatenate(test_ids)] == np.concatenate(test_pc)))


def roc_auc(scores: np.ndarray, labels_: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    labels_ = np.asarray(labels_, bool)
    pos, neg = int(labels_.sum()), int((~labels_).sum())
    if not pos or not neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels_].sum() - pos * (pos + 1) / 2) / (pos * neg))


def onset_auc(train_ids, train_onsets, test_ids, test_onsets, num_tokens: int) -> float:
    """ROC AUC of onset frames scored by the training onset rate of the (previous, current) token bigram."""
    hits, counts = np.zeros((num_tokens, num_tokens)), np.zeros((num_tokens, num_tokens))
    for ids, on in zip(train_ids, train_onsets):
        np.add.at(hits, (ids[:-1], ids[1:]), on[1:])
        np.add.at(counts, (ids[:-1], ids[1:]), 1)
    prior = np.mean(np.concatenate([o[1:] for o in train_onsets]))
    rate = (hits + prior) / (counts + 1)
    scores = np.concatenate([rate[ids[:-1], ids[1:]] for ids in test_ids])
    return roc_auc(scores, np.concatenate([o[1:] for o in test_onsets]))


def logmel_frames(waves: Sequence[np.ndarray], sample_rate: int, frame_rate: float, n_mels: int = 80) -> list:
    import librosa

    hop = int(round(sample_rate / frame_rate))
    return [np.log(librosa.feature.melspectrogram(y=np.asarray(w, np.float32), sr=sample_rate, n_fft=1024,
                                                  hop_length=hop, n_mels=n_mels) + 1e-5).T for w in waves]


def _kmeans_ids(train_feats: list, all_feats: list, num_clusters: int, seed: int) -> list:
    from musiclm_jax.quantization.kmeans import KMeansConfig, fit

    x = np.concatenate(train_feats).astype(np.float32)
    cfg = KMeansConfig(num_clusters=num_clusters, batch_size=min(4096, len(x)), num_steps=100,
                       init_samples=min(len(x), max(4 * num_clusters, 4096)), seed=seed)
    km = fit(x, cfg)
    return [km.predict(f).astype(np.int64) for f in all_feats]


def frame_probe_table(train_waves: Sequence[np.ndarray], test_waves: Sequence[np.ndarray], tok, sample_rate: int = 16000,
                      random_tok=None, seed: int = 0) -> list[dict]:
    """Rows {"tokens", "clusters", "pitch_class", "onset_auc"} for the tokenizer `tok` (needs its k-means), the
    random-init tokenizer `random_tok` (its k-means fitted here on the training waves; give it `tok`'s
    chroma_weight to see what training adds), log-mel k-means, chance."""
    if tok.kmeans is None:
        raise ValueError("frame probes read tokens: fit the k-means first (`musiclm-jax semantic fit-kmeans`)")
    _check_clips(train_waves, "training")
    _check_clips(test_waves, "test")
    waves = [np.asarray(w, np.float32) for w in list(train_waves) + list(test_waves)]
    n_train, k, rate = len(train_waves), tok.num_tokens, tok.cfg.frame_rate
    # Features in batches of equal-length clips (FrameFeatures), then each clip's k-means ids.
    sources = {"trained tokens": [tok.kmeans.predict(f).astype(np.int64)
                                  for f in FrameFeatures(tok, tokens=True)(waves, sample_rate)]}
    if random_tok is not None:
        feats = FrameFeatures(random_tok, tokens=True)(waves, sample_rate)
        sources["random-init tokens"] = _kmeans_ids(feats[:n_train], feats, k, seed)
    mel = logmel_frames(waves, sample_rate, rate)
    sources["log-mel k-means"] = _kmeans_ids(mel[:n_train], mel, k, seed)
    targets = [frame_targets(w, sample_rate, rate, len(ids)) for w, ids in zip(waves, sources["trained tokens"])]
    pcs, ons = [t[0] for t in targets], [t[1] for t in targets]
    rows = []
    for name, ids in sources.items():
        ids = [i[:len(p)] for i, p in zip(ids, pcs)]
        rows.append({"tokens": name, "clusters": k,
                     "pitch_class": pitch_class_accuracy(ids[:n_train], pcs[:n_train], ids[n_train:], pcs[n_train:], k),
                     "onset_auc": onset_auc(ids[:n_train], ons[:n_train], ids[n_train:], ons[n_train:], k)})
    test_pc = np.concatenate(pcs[n_train:])
    majority = np.bincount(np.concatenate(pcs[:n_train]), minlength=12).argmax()
    rows.append({"tokens": "chance", "clusters": 0, "pitch_class": float(np.mean(test_pc == majority)),
                 "onset_auc": 0.5})
    return rows


def frame_markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| tokens | clusters | pitch class of the frame (%) | onset AUC |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['clusters'] or '-'} | {100 * r['pitch_class']:.1f} | {r['onset_auc']:.3f} |")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict], attributes: Sequence[str] = ATTRIBUTES) -> str:
    """Rows -> a Markdown table of accuracies in %."""
    head = "| features | dim | " + " | ".join(attributes) + " |"
    lines = [head, "|" + "---|" * (len(attributes) + 2)]
    for r in rows:
        cells = ["-" if r.get(a) is None else f"{100 * r[a]:.1f}" for a in attributes]
        lines.append(f"| {r['features']} | {r['dim'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
