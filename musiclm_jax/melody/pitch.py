"""The pitch-class melody stream: what note of the tune sounds when, as one token per 0.16 s.

    pm = PitchMelody()
    toks = pm.frame_tokens(hum, sample_rate)           # [frames, 1]: pitch class 0..11 (C..B), REST = 12
    toks = notes_tokens(pitches, starts, ends, frames)  # the same stream from a score's notes (training data)

The learned melody embedder (melody/api.py) summarises 1 s windows into RVQ codes; a stage LM then has to unpack
every note from a code, and the briefly trained quickstart stages did not (README, melody conditioning). This
stream states the notes directly, at a frame rate the semantic stage can align with its own frames (4 semantic
frames per melody frame at 25 Hz), so the stage reads "this frame should sound like pitch class p" the way it reads
its beat phase (lm/stages.py `aligned_ids`). Training takes it from SynthCaps' lead-line notes; generation tracks
the user's hum or whistle with pYIN (octave and timbre do not matter, the key does). It has no weights: a model
directory's `melody/pitch.json` names it, and the tokenizer spec's melody source "pitch" does.

It keeps the interface of `Melody` that the pipeline and tokenizers use (`frame_rate`, `frame_tokens`, `cfg` with
rvq_levels / rvq_codebook_size / window_seconds, `token_fingerprint`).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

SOURCE = "pitch"          # the tokenizer spec's melody source that means this stream
MANIFEST = "pitch.json"   # in a model directory's melody/
REST = 12                 # no note sounds (a rest inside the tune); -1 stays "no melody at all"
CODES = 13


@dataclasses.dataclass(frozen=True)
class PitchConfig:
    frame_rate: float = 6.25      # 4 semantic frames at 25 Hz
    sample_rate: int = 16000      # the tracker's rate
    fmin: float = 65.0            # C2 .. C7: hums, whistles, ocarinas
    fmax: float = 2100.0
    min_voiced: float = 0.5       # a frame is a note when at least this fraction of its tracker frames is voiced
    window_seconds: float = 0.5   # the shortest melody accepted (check_melody_audio)
    rvq_levels: int = 1           # the token stream's shape, named as the embedder's (lm.stages.TokenSizes)
    rvq_codebook_size: int = CODES


def notes_tokens(pitches, starts, ends, frames: int, frame_rate: float = PitchConfig.frame_rate) -> np.ndarray:
    """MIDI notes (pitch, start s, end s) -> int32 [frames, 1]: the pitch class that sounds longest in each frame
    [i / rate, (i + 1) / rate), REST where no note covers half of it. No notes at all -> -1 (no melody)."""
    pitches, starts, ends = (np.asarray(x, np.float64).reshape(-1) for x in (pitches, starts, ends))
    if not (len(pitches) == len(starts) == len(ends)):
        raise ValueError(f"notes need as many pitches, starts and ends, got {len(pitches)}, {len(starts)}, "
                         f"{len(ends)}")
    if len(pitches) == 0:
        return np.full((frames, 1), -1, np.int32)
    lo = np.arange(frames)[:, None] / frame_rate
    hi = lo + 1.0 / frame_rate
    overlap = np.clip(np.minimum(hi, ends[None]) - np.maximum(lo, starts[None]), 0.0, None)   # [frames, notes]
    per_pc = np.zeros((frames, 12))
    np.add.at(per_pc.T, np.mod(np.round(pitches).astype(int), 12), overlap.T)
    out = np.where(per_pc.max(1) >= 0.5 / frame_rate, per_pc.argmax(1), REST)
    return out.astype(np.int32)[:, None]


class PitchMelody:
    """The pitch tracker with the melody embedder's interface (see the module docstring)."""

    def __init__(self, cfg: PitchConfig | None = None):
        self.cfg = cfg or PitchConfig()

    @classmethod
    def from_dir(cls, melody_dir: str) -> "PitchMelody":
        with open(os.path.join(melody_dir, MANIFEST)) as f:
            return cls(PitchConfig(**json.load(f)))

    def save(self, melody_dir: str) -> str:
        os.makedirs(melody_dir, exist_ok=True)
        path = os.path.join(melody_dir, MANIFEST)
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self.cfg), f, indent=1)
        return path

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    @property
    def token_fingerprint(self) -> str:
        c = self.cfg
        return f"pitch-{c.frame_rate:g}-{c.fmin:g}-{c.fmax:g}-{c.min_voiced:g}"

    def track(self, wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, float]:
        """pYIN over the wave -> (MIDI pitch per tracker frame, nan where unvoiced; voiced flags; tracker rate)."""
        import librosa

        from musiclm_jax.audio.io import resample

        c = self.cfg
        wave = resample(np.asarray(wave, np.float32), int(sample_rate), c.sample_rate)
        hop = c.sample_rate // 100
        f0, voiced, _ = librosa.pyin(wave, fmin=c.fmin, fmax=c.fmax, sr=c.sample_rate, frame_length=1024,
                                     hop_length=hop, center=True)
        midi = np.where(voiced, 69.0 + 12.0 * np.log2(np.maximum(np.nan_to_num(f0, nan=1.0), 1e-6) / 440.0), np.nan)
        return midi, voiced.astype(bool), c.sample_rate / hop

    def frame_tokens(self, wave: np.ndarray, sample_rate: int, frames: int | None = None) -> np.ndarray:
        """A mono hum / whistle / melody line -> int32 [frames, 1] (default round(seconds x rate), at least 1):
        each frame's most frequent voiced pitch class, REST where under `min_voiced` of it is voiced."""
        wave = np.asarray(wave, np.float32)
        if wave.ndim != 1:
            raise ValueError(f"expected mono melody audio [samples], got shape {wave.shape}: mix down first")
        c = self.cfg
        seconds = len(wave) / float(sample_rate)
        frames = max(1, int(round(seconds * c.frame_rate))) if frames is None else int(frames)
        midi, voiced, rate = self.track(wave, sample_rate)
        which = np.floor(np.arange(len(midi)) / rate * c.frame_rate).astype(int)   # tracker frame -> melody frame
        out = np.full(frames, REST, np.int32)
        for i in range(frames):
            sel = which == i
            if sel.sum() and voiced[sel].mean() >= c.min_voiced:
                pcs = np.mod(np.round(midi[sel][voiced[sel]]).astype(int), 12)
                out[i] = np.bincount(pcs, minlength=12).argmax()
        return out[:, None]


def is_pitch_dir(melody_dir: str) -> bool:
    return os.path.isfile(os.path.join(melody_dir, MANIFEST))
