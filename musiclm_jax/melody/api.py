"""A trained melody embedder for inference: window embeddings of any audio, and held-out retrieval.

    mel = Melody.from_checkpoint("out/melody_tiny")
    emb = mel.embed_windows(wave, sample_rate)      # [n_windows, embed_dim], one per `stride_seconds`
    toks = mel.frame_tokens(wave, sample_rate)       # [frames, levels]: the conditioning stream, frame i centred
                                                     # at (i + 0.5) * stride_seconds (a `frame_rate` Hz stream)

The architecture comes from the checkpoint's own saved gin config (MelodyConfig bindings); no side file.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.audio.io import resample, windows as audio_windows
from musiclm_jax.melody.model import MelodyConfig, MelodyEmbedder
from musiclm_jax.quantization import embeddings as rvq_lib
from musiclm_jax.quantization.fingerprint import array_digest

QUANTIZER_DIR = "quantizer"


def windows(wave: np.ndarray, cfg: MelodyConfig) -> np.ndarray:
    """Mono [samples] at cfg.sample_rate -> [n, window_samples], one every `stride_seconds` (`audio.io.windows`)."""
    return audio_windows(wave, cfg.window_samples, cfg.stride_samples, "melody audio")


def tiny_config() -> MelodyConfig:
    """The tiny random embedder's config: 1 s windows every 0.5 s (2 Hz tokens), 2 x 8 codes (lm.stages TINY_MELODY)."""
    return MelodyConfig(sample_rate=16000, window_seconds=1.0, stride_seconds=0.5, n_fft=256, hop_length=160,
                        n_mels=16, patch_frames=4, d_model=16, num_layers=1, num_heads=2, head_dim=8, d_ff=32,
                        embed_dim=8, rvq_levels=2, rvq_codebook_size=8)


def frame_windows(wave: np.ndarray, cfg: MelodyConfig, frames: int | None = None) -> np.ndarray:
    """Mono [samples] at cfg.sample_rate -> [frames, window_samples]: window i centred at (i + 0.5) * stride,
    zero-padded past both ends; `frames` defaults to round(seconds / stride) (at least 1). This makes the melody
    tokens a time stream at 1 / stride Hz that crops and sliding windows cut like the other token streams."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected mono melody audio [samples], got shape {wave.shape}: mix down first")
    n, hop = cfg.window_samples, cfg.stride_samples
    frames = max(1, int(round(wave.shape[0] / hop))) if frames is None else int(frames)
    starts = (np.arange(frames) * hop + hop // 2).astype(np.int64)   # in the padded wave: centre - n/2 + n/2
    padded = np.concatenate([np.zeros(n // 2, np.float32), wave, np.zeros(n + hop * frames, np.float32)])
    return padded[starts[:, None] + np.arange(n)[None, :]]


def check_melody_audio(wave: np.ndarray, sample_rate: int, cfg: MelodyConfig, what: str = "melody") -> np.ndarray:
    """One-line errors for a melody input that cannot condition generation: not mono, empty, NaN, silent, or shorter
    than one embedder window. Returns float32 mono."""
    from musiclm_jax.audio.io import check_samples

    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"{what} must be mono [samples], got shape {wave.shape}: mix it down first")
    check_samples(wave, what)
    seconds = wave.shape[0] / float(sample_rate)
    if seconds < cfg.window_seconds:
        raise ValueError(f"{what} is {seconds:.2f} s long; melody conditioning needs at least {cfg.window_seconds:g} "
                         "s (one melody-embedder window): record a longer hum or whistle")
    if float(np.max(np.abs(wave))) < 1e-4:
        raise ValueError(f"{what} is silent (peak below 1e-4): record the melody louder or check the file")
    return wave


@nnx.jit
def _embed(model: MelodyEmbedder, x: jax.Array) -> jax.Array:
    return model(x)


class Melody:
    def __init__(self, model: MelodyEmbedder, quantizer=None, fingerprint: str = "", batch_size: int = 16):
        self.model, self.cfg, self.batch_size = model, model.cfg, batch_size
        self.quantizer, self.fingerprint = quantizer, fingerprint

    @classmethod
    def random(cls, seed: int = 0, cfg: MelodyConfig | None = None) -> "Melody":
        """A randomly initialised embedder with a random quantizer (tests, `random:<seed>` tokenizers); tiny by
        default (`tiny_config`)."""
        from musiclm_jax.quantization.fingerprint import module_fingerprint

        cfg = cfg or tiny_config()
        model = MelodyEmbedder(cfg, nnx.Rngs(seed))
        return cls(model, rvq_lib.new_rvq(cfg.rvq_levels, cfg.rvq_codebook_size, cfg.embed_dim, seed=seed),
                   module_fingerprint(model))

    @classmethod
    def from_checkpoint(cls, model_dir: str, step: int | None = None) -> "Melody":
        from musiclm_jax.melody.family import GROUP, MelodyFamily
        from musiclm_jax.quantization.fingerprint import params_fingerprint
        from musiclm_jax.train.loader import load_for_inference, saved_config

        if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
            raise ValueError(f"{model_dir} holds no checkpoints/: pass the model_dir of `musiclm-jax melody train`")
        cfg = saved_config(model_dir, MelodyConfig, step)
        loaded = load_for_inference(MelodyFamily(config=cfg), model_dir, step)
        quantizer = None
        if os.path.isdir(os.path.join(model_dir, QUANTIZER_DIR)):
            quantizer = rvq_lib.load_rvq(os.path.join(model_dir, QUANTIZER_DIR), cfg.rvq_levels,
                                         cfg.rvq_codebook_size, cfg.embed_dim)
        return cls(loaded.models[GROUP], quantizer, params_fingerprint(loaded.params))

    def embed_batch(self, windows_: np.ndarray) -> np.ndarray:
        """[N, window_samples] float32 -> unit embeddings [N, embed_dim] (padded to one compiled batch shape)."""
        out = []
        for i in range(0, len(windows_), self.batch_size):
            chunk = windows_[i:i + self.batch_size]
            pad = self.batch_size - len(chunk)
            x = np.pad(chunk, ((0, pad), (0, 0))) if pad else chunk
            out.append(np.asarray(_embed(self.model, jnp.asarray(x, jnp.float32)))[:len(chunk)])
        return np.concatenate(out)

    def embed_windows(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        wave = resample(np.asarray(wave, np.float32), int(sample_rate), self.cfg.sample_rate)
        return self.embed_batch(windows(wave, self.cfg))

    @property
    def frame_rate(self) -> float:
        """Melody token frames per second (one per `stride_seconds`)."""
        return 1.0 / self.cfg.stride_seconds

    # -- tokens ---------------------------------------------------------------------------------------------------
    def fit_quantizer(self, embeddings: np.ndarray, seed: int = 0) -> dict:
        """Fits the RVQ (cfg.rvq_levels x cfg.rvq_codebook_size) on window embeddings [N, D]; returns how much the
        tokens lose (cosine to the embedding by number of levels, code usage)."""
        self.quantizer = rvq_lib.fit_rvq(embeddings, self.cfg.rvq_levels, self.cfg.rvq_codebook_size, seed=seed)
        return rvq_lib.quantization_report(self.quantizer, embeddings)

    def save_quantizer(self, model_dir: str) -> str:
        return rvq_lib.save_rvq(self._need_quantizer(), os.path.join(model_dir, QUANTIZER_DIR))

    def tokens(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """One mono clip -> int32 melody tokens [n_windows, rvq_levels] (one row per `stride_seconds`)."""
        return rvq_lib.encode(self._need_quantizer(), self.embed_windows(wave, sample_rate))

    def frame_tokens(self, wave: np.ndarray, sample_rate: int, frames: int | None = None) -> np.ndarray:
        """One mono clip -> int32 melody tokens [frames, rvq_levels] as a time stream (`frame_windows`): the
        conditioning of the melody-conditioned semantic stage (lm/stages.py)."""
        wave = resample(np.asarray(wave, np.float32), int(sample_rate), self.cfg.sample_rate)
        return rvq_lib.encode(self._need_quantizer(), self.embed_batch(frame_windows(wave, self.cfg, frames)))

    @property
    def token_fingerprint(self) -> str:
        return f"{self.fingerprint}-{array_digest(self._need_quantizer().codebook[...], chars=8)}"

    def _need_quantizer(self):
        if self.quantizer is None:
            raise ValueError("this melody embedder has no quantizer: run `musiclm-jax melody fit-quantizer` first")
        return self.quantizer


def load_melody_dir(melody_dir: str):
    """A model directory's melody/ tokenizer: the pitch-class stream when it holds pitch.json (melody/pitch.py),
    else a trained embedder with its quantizer."""
    from musiclm_jax.melody.pitch import PitchMelody, is_pitch_dir
    return PitchMelody.from_dir(melody_dir) if is_pitch_dir(melody_dir) else Melody.from_checkpoint(melody_dir)


def chroma_embed(windows_: np.ndarray, sample_rate: int) -> np.ndarray:
    """The hand-made baseline: each window's chroma sequence (librosa, 12 x frames, every frame L2-normalised),
    flattened and normalised. Timbre-invariant by construction; transposition moves it."""
    from musiclm_jax.audio.features import chroma_frames

    out = []
    for w in windows_:
        v = chroma_frames(w, sample_rate, hop_length=512).reshape(-1)
        out.append(v / max(float(np.linalg.norm(v)), 1e-6))
    return np.stack(out).astype(np.float32)


def retrieval(embed, audio: np.ndarray, num_timbres: int, window_samples: int, num_candidates: int = 100,
              seed: int = 0) -> dict:
    """Held-out retrieval on a rendition bank (audio int16 [lines, renditions, samples], renditions = the timbres
    then the transposed copies) with `embed` ([N, window_samples] float32 -> unit vectors [N, D], e.g.
    `Melody.embed_batch` or `chroma_embed`). For every line and every ordered pair of timbres (query, candidate),
    the query's first window is ranked against the candidate-timbre renditions of up to `num_candidates` lines (its
    own included): top-1 accuracy. `transposition_accuracy`: how often the same line in the other timbre is nearer
    than the line's own transposed copies. Chance top-1 is 1 / candidates."""
    x = audio[..., :window_samples].astype(np.float32) / 32768.0
    lines, renditions = x.shape[:2]
    emb = np.asarray(embed(x.reshape(lines * renditions, window_samples))).reshape(lines, renditions, -1)
    rng = np.random.default_rng(seed)
    hits, trans, total = 0, 0, 0
    for i in range(lines):
        others = [j for j in range(lines) if j != i]
        pool = [i] + list(rng.permutation(others)[:max(0, num_candidates - 1)])
        for q in range(num_timbres):
            for c in range(num_timbres):
                if q == c:
                    continue
                sims = emb[pool, c] @ emb[i, q]
                hits += int(np.argmax(sims) == 0)
                own = float(emb[i, c] @ emb[i, q])
                trans += int(all(own > float(emb[i, t] @ emb[i, q]) for t in range(num_timbres, renditions)))
                total += 1
    n = min(num_candidates, lines)
    return {"lines": lines, "candidates": n, "queries": total, "top1": hits / total, "chance_top1": 1.0 / n,
            "transposition_accuracy": trans / total}
