"""MuLan evaluation on SynthCaps: text<->audio retrieval recall@k and zero-shot attribute accuracy, with baselines.

Retrieval: for each caption, the rank of its own clip among all clips of the split (text->audio), and the reverse.
Zero-shot: each clip gets the class whose prompt embedding is nearest to its audio embedding, for genre, lead
instrument, tempo bucket (SynthCaps' tempo words), key (tonic + mode) and major/minor. Chance is 1 / number of
classes present.
Swap tests (what conditioning on tempo and key needs, and zero-shot over short prompts measures poorly): for each
clip, is its own caption nearer to its audio than the same caption restated with the key a tritone away, the other
mode, or the tempo 30 % off (`captions.restate`)? Accuracy over clips, chance 0.5, with a 95 % binomial interval.

Baselines, same splits and prompts:
  * random: random unit vectors for audio and text (what chance looks like in these metrics);
  * minilm_probe: the frozen MiniLM sentence embedding for text, and a ridge-regression (linear) probe from
    log-mel statistics (mean and std over time per mel band) to MiniLM caption embeddings, fitted on train clips.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from musiclm_jax.data.synthcaps.captions import BPM_PATTERN, KEY_PATTERN, restate, tempo_word

KS = (1, 5, 10)

PROMPTS = {
    "genre": ("genre", lambda v: f"a song in the style of {v}"),
    "instrument": ("lead_instrument", lambda v: f"a song featuring the {v}"),
    "tempo": ("bpm", lambda v: f"a {v} song"),
    "key": ("key", lambda v: f"a song in {v}"),
    "mode": ("mode", lambda v: f"a song in a {v} key"),
}


def _swap_tempo(caption: str) -> str:
    bpm = float(BPM_PATTERN.search(caption).group(1))
    return restate(caption, bpm=bpm * 1.3 if bpm < 110 else bpm / 1.3)


def _swap_mode(caption: str) -> str:
    return restate(caption, mode="major" if KEY_PATTERN.search(caption).group(2).lower() == "minor" else "minor")


# attribute -> (does the caption state it, the caption with it changed)
SWAPS = {
    "tempo": (BPM_PATTERN.search, _swap_tempo),
    "key": (KEY_PATTERN.search, lambda c: restate(c, semitones=6)),
    "mode": (KEY_PATTERN.search, _swap_mode),
}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def recall_at_k(sims: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """`sims [queries, items]`, the match of query i being item i -> {"r@k": fraction}."""
    true = np.diagonal(sims)[:, None]
    ranks = np.sum(sims > true, axis=-1)
    return {f"r@{k}": float(np.mean(ranks < k)) for k in ks}


def attribute_value(clip: dict, attribute: str):
    field = PROMPTS[attribute][0]
    value = clip[field]
    if attribute == "key":
        return f"{value} {clip['mode']}"
    return tempo_word(float(value)) if attribute == "tempo" else str(value)


def zero_shot(audio_emb: np.ndarray, clips: list[dict], embed_text: Callable[[list[str]], np.ndarray]) -> dict:
    """{attribute: {"accuracy", "chance", "classes"}} for the attributes the clips carry."""
    out = {}
    for attribute, (field, prompt) in PROMPTS.items():
        if not clips or field not in clips[0]:
            continue
        truth = [attribute_value(c, attribute) for c in clips]
        classes = sorted(set(truth))
        prompt_emb = _unit(embed_text([prompt(v) for v in classes]))
        pred = np.argmax(_unit(audio_emb) @ prompt_emb.T, axis=-1)
        acc = float(np.mean([classes[p] == t for p, t in zip(pred, truth)]))
        out[attribute] = {"accuracy": acc, "chance": 1.0 / len(classes), "classes": len(classes)}
    return out


def swap_tests(audio_emb: np.ndarray, text_emb: np.ndarray, clips: list[dict],
               embed_text: Callable[[list[str]], np.ndarray]) -> dict:
    """{attribute: {"accuracy", "interval", "num"}}: how often a clip's own caption beats the caption with that
    attribute changed (see the module docstring); attributes no caption states are left out."""
    audio, own = _unit(audio_emb), _unit(text_emb)
    out = {}
    for attribute, (states, swap) in SWAPS.items():
        rows = [i for i, c in enumerate(clips) if "caption" in c and states(c["caption"])]
        if not rows:
            continue
        swapped = _unit(embed_text([swap(clips[i]["caption"]) for i in rows]))
        wins = np.sum(audio[rows] * own[rows], -1) > np.sum(audio[rows] * swapped, -1)
        acc, n = float(np.mean(wins)), len(rows)
        half = 1.96 * np.sqrt(max(acc * (1 - acc), 1e-12) / n)
        out[attribute] = {"accuracy": acc, "interval": [max(acc - half, 0.0), min(acc + half, 1.0)], "num": n}
    return out


def evaluate_embeddings(audio_emb: np.ndarray, text_emb: np.ndarray, clips: list[dict],
                        embed_text: Callable[[list[str]], np.ndarray]) -> dict:
    sims = _unit(audio_emb) @ _unit(text_emb).T  # [audio, text]
    n = len(clips)
    return {"num_clips": n,
            "text_to_audio": recall_at_k(sims.T), "audio_to_text": recall_at_k(sims),
            "chance": {f"r@{k}": min(k, n) / n for k in KS},
            "zero_shot": zero_shot(audio_emb, clips, embed_text),
            "swap": swap_tests(audio_emb, text_emb, clips, embed_text)}


# The text-side check of the tempo / key issue: sentences in a wording unlike SynthCaps' templates that differ only in
# tempo, only in key, or in genre and instrument. A text tower that can condition tempo and key must tell them apart.
SEPARATION_SENTENCE = "An energetic {genre} groove with {instrument} lead at {bpm} BPM in {key}."
SEPARATION_TEMPI = (70, 100, 130, 160)
SEPARATION_KEYS = ("C major", "F# minor", "Eb major", "A minor")


def text_separation(embed_text: Callable[[list[str]], np.ndarray], tokens_from_text=None) -> dict:
    """Mean pairwise cosine of text embeddings across tempi (same genre and key), across keys (same tempo), and of
    a different genre + instrument; with `tokens_from_text`, the fraction of tempo / key pairs whose conditioning
    tokens differ. Lower cosines and more distinct tokens: the text side can say tempo and key."""
    def mean_offdiag(e):
        e = _unit(e)
        c = e @ e.T
        return float(c[~np.eye(len(c), dtype=bool)].mean())

    base = dict(genre="rock", instrument="electric guitar")
    tempo = [SEPARATION_SENTENCE.format(bpm=b, key="A minor", **base) for b in SEPARATION_TEMPI]
    keys = [SEPARATION_SENTENCE.format(bpm=120, key=k, **base) for k in SEPARATION_KEYS]
    other = SEPARATION_SENTENCE.format(genre="jazz", instrument="flute", bpm=130, key="A minor")
    e_t, e_k, e_o = _unit(embed_text(tempo)), _unit(embed_text(keys)), _unit(embed_text([other]))
    out = {"tempo_cosine": mean_offdiag(e_t), "tempo_130_vs_160": float(e_t[2] @ e_t[3]),
           "key_cosine": mean_offdiag(e_k), "genre_instrument_cosine": float(e_t[2] @ e_o[0])}
    if tokens_from_text is not None:
        def distinct(texts):
            t = np.asarray(tokens_from_text(texts))
            pairs = [(i, j) for i in range(len(t)) for j in range(i + 1, len(t))]
            return float(np.mean([not np.array_equal(t[i], t[j]) for i, j in pairs]))
        out["tempo_tokens_distinct"], out["key_tokens_distinct"] = distinct(tempo), distinct(keys)
    return out


def evaluate_mulan(mulan, clips: list[dict]) -> dict:
    """Retrieval, zero-shot and swap tests of the embeddings; with a quantizer also "swap_tokens": the swap tests
    with each caption's text embedding replaced by its conditioning tokens' decoded embedding (what the stage LMs
    are conditioned on; two captions with equal tokens count as a failure)."""
    audio = np.stack([mulan.embed_audio(c["audio"], c["sample_rate"]) for c in clips])
    captions = [c["caption"] for c in clips]
    out = evaluate_embeddings(audio, mulan.embed_text(captions), clips, mulan.embed_text)
    if getattr(mulan, "quantizer", None) is not None:
        from musiclm_jax.quantization import embeddings as rvq_lib

        def quantized(texts):
            return rvq_lib.decode(mulan.quantizer, mulan.tokens_from_text(texts))
        out["swap_tokens"] = swap_tests(audio, quantized(captions), clips, quantized)
    return out


def random_baseline(clips: list[dict], dim: int = 128, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    audio, text = rng.normal(size=(len(clips), dim)), rng.normal(size=(len(clips), dim))
    return evaluate_embeddings(audio, text, clips, lambda texts: rng.normal(size=(len(texts), dim)))


# --- frozen MiniLM + linear audio probe ---------------------------------------------------------------------------

class MiniLMText:
    """Frozen MiniLM sentence embeddings (mean pooling + normalize), jitted."""

    def __init__(self, max_length: int = 128):
        from flax import nnx

        from musiclm_jax.mulan.text import TextTokenizer, build_text_encoder, minilm_config

        self.tok = TextTokenizer(max_length)
        self.encoder = build_text_encoder(minilm_config(), nnx.Rngs(0))
        self._fn = nnx.jit(lambda enc, ids, mask: enc(ids, mask))

    def __call__(self, texts: list[str]) -> np.ndarray:
        import jax.numpy as jnp

        ids, mask = self.tok(texts)
        return _unit(np.asarray(self._fn(self.encoder, jnp.asarray(ids), jnp.asarray(mask))))


def mel_statistics(clip: dict, sample_rate: int = 16000, n_mels: int = 64) -> np.ndarray:
    """Mean and std over time of each log-mel band of the whole clip: [2 * n_mels]."""
    import jax.numpy as jnp

    from musiclm_jax.audio import resample
    from musiclm_jax.audio.features import log_mel_spectrogram

    wave = resample(clip["audio"], clip["sample_rate"], sample_rate)
    mel = np.asarray(log_mel_spectrogram(jnp.asarray(wave), sample_rate, n_fft=512, hop_length=160, n_mels=n_mels))
    return np.concatenate([mel.mean(0), mel.std(0)])


def minilm_probe_baseline(train_clips: list[dict], test_clips: list[dict], text: MiniLMText | None = None,
                          ridge: float = 1.0) -> dict:
    if not train_clips:
        raise ValueError("the linear-probe baseline needs training clips: pass a non-empty train split")
    text = text or MiniLMText()
    x_train = np.stack([mel_statistics(c) for c in train_clips])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    norm = lambda x: np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)
    xt = norm(x_train)
    y = text([c["caption"] for c in train_clips])
    w = np.linalg.solve(xt.T @ xt + ridge * np.eye(xt.shape[1]), xt.T @ y)
    audio = norm(np.stack([mel_statistics(c) for c in test_clips])) @ w
    return evaluate_embeddings(audio, text([c["caption"] for c in test_clips]), test_clips, text)


def markdown_table(results: dict[str, dict]) -> str:
    """{system: evaluate_* result} -> a markdown table (retrieval, then zero-shot accuracy)."""
    attrs = [a for a in PROMPTS if any(a in r["zero_shot"] for r in results.values())]
    swaps = [a for a in SWAPS if any(a in r.get("swap", {}) for r in results.values())]
    head = ["system", "t→a R@1", "t→a R@5", "t→a R@10", "a→t R@1", "a→t R@5", "a→t R@10"] + attrs + \
        [f"{a} swap" for a in swaps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name] + [f"{r['text_to_audio'][f'r@{k}']:.2f}" for k in KS] + \
                [f"{r['audio_to_text'][f'r@{k}']:.2f}" for k in KS] + \
                [f"{r['zero_shot'][a]['accuracy']:.2f}" if a in r["zero_shot"] else "-" for a in attrs] + \
                [f"{r['swap'][a]['accuracy']:.2f}" if a in r.get("swap", {}) else "-" for a in swaps]
        lines.append("| " + " | ".join(cells) + " |")
    any_r = next(iter(results.values()))
    chance = ["chance"] + [f"{any_r['chance'][f'r@{k}']:.2f}" for k in KS] * 2 + \
             [f"{any_r['zero_shot'][a]['chance']:.2f}" if a in any_r["zero_shot"] else "-" for a in attrs] + \
             ["0.50"] * len(swaps)
    lines.append("| " + " | ".join(chance) + " |")
    return "\n".join(lines)
