"""The token layout of the three MusicLM stage LMs: the one place that defines vocabularies, offsets and special ids.

    sizes = TokenSizes()                              # paper: MuLan 12x1024, semantic 1024, codec 12x1024, coarse 4
    coarse = StageLayout("coarse", sizes)
    inputs, targets = coarse.build(mulan=m, semantic=s, acoustic=a)   # int32 [b, P], [b, T] (numpy or jnp)
    codes = coarse.targets_to_codes(targets)           # -> [b, frames, 4] raw codec codes
    mask = coarse.logit_mask()                         # for lm.decoding.sample(logit_mask_fn=...)

Every stage has its own id space: 4 special ids, then one id range per token stream, in this order:

    semantic stage  M (+ Mel) -> S   [specials | MuLan level 0 .. Qm-1 | semantic | (melody level 0 .. Ql-1)]
    coarse stage    M + S (+ Mel) -> A[:Qc]
                                     [specials | MuLan 0 .. Qm-1 | semantic | acoustic 0 .. Qc-1 | (melody 0 .. Ql-1)]
    fine stage      A[:Qc] -> A[Qc:] [specials | acoustic level 0 .. Q-1]

so a MuLan or semantic token has the same id in the semantic and coarse stages. Melody conditioning (TokenSizes
melody_levels > 0; the paper's melody tokens, which it concatenates with the MuLan tokens) adds its streams to the
stages named by `TokenSizes.melody_stages` (default semantic and coarse, as the paper; ("semantic",) leaves the
coarse stage to hear the melody through the semantic tokens only), after that stage's other streams (so no other id
moves): the melody tokens of the crop's time (frame-major) come last in the prefix, before SEP. A melody code of -1
means "no melody" and becomes UNCOND: text-only generation, and what `TokenLM.melody_prob` dropout trains for (it
finds the melody by its ids, `melody_ids()`). Tempo conditioning (TokenSizes.beat_phases, the stages named by
beat_stages) ends a stage's prefix with two tempo tokens and gives each target its beat phase as an aligned id; key
conditioning (TokenSizes.key_stages) adds one key token (tonic x mode) before them. `inputs` is the conditioning
prefix followed by SEP (the TokenLM attends to it bidirectionally; SEP's logits predict the first target).
Acoustic tokens are flattened frame-major: t0q0 t0q1 .. t0q{n-1} t1q0 ... Targets have a fixed length (no EOS).

Classifier-free guidance: the "unconditional" prompt replaces the MuLan tokens by UNCOND (`uncond_inputs`);
training does the same with probability `TokenLM.uncond_prob` over `cond_span()` (see lm/models.py).
The fine stage has no MuLan conditioning, so no guidance.
"""
from __future__ import annotations

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.musical_key import NUM_KEYS

PAD, EOS, SEP, UNCOND = 0, 1, 2, 3
NUM_SPECIAL = 4
STAGES = ("semantic", "coarse", "fine")
NEG_INF = -1e30  # the same finite "minus infinity" as lm.decoding


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TokenSizes:
    """Sizes of the three tokenizers' outputs (the defaults are the paper's)."""

    mulan_levels: int = 12
    mulan_codes: int = 1024
    semantic_codes: int = 1024
    codec_levels: int = 12
    codec_codes: int = 1024
    coarse_levels: int = 4
    vocab_multiple: int = 128  # stage vocab sizes are rounded up to this (MXU-friendly embedding tables)
    melody_levels: int = 0     # melody conditioning (paper: 24 x 512); 0 = none
    melody_codes: int = 0
    melody_stages: tuple[str, ...] = ("semantic", "coarse")   # the stages whose prefix reads the melody tokens
    beat_phases: int = 0       # tempo conditioning: beat-phase ids per beat; 0 = none
    beat_stages: tuple[str, ...] = ("semantic",)   # the stages told the tempo (with beat_phases > 0)
    key_stages: tuple[str, ...] = ()   # the stages whose prefix reads the stated key (one token); () = none
    melody_aligned: bool = False   # the semantic stage's targets also read the melody token of their time as an
                                   # aligned id (a pitch-class stream, melody/pitch.py: melody_levels 1)

    def __post_init__(self):
        for name, may_be_empty in (("melody_stages", False), ("key_stages", True), ("beat_stages", False)):
            stages = getattr(self, name)
            object.__setattr__(self, name, tuple(stages) if isinstance(stages, (list, tuple)) else stages)
            value = getattr(self, name)
            if (not isinstance(value, tuple) or not (value or may_be_empty)
                    or not set(value) <= {"semantic", "coarse"}):
                raise ValueError(f"TokenSizes.{name} must name 'semantic' and/or 'coarse'"
                                 f"{' (or none)' if may_be_empty else ''}, got {stages!r}")
        for f in dataclasses.fields(self):
            if f.name in ("melody_stages", "key_stages", "beat_stages", "melody_aligned"):
                continue
            v = getattr(self, f.name)
            low = 0 if f.name.startswith("melody_") or f.name == "beat_phases" else 1
            if not isinstance(v, int) or v < low:
                raise ValueError(f"TokenSizes.{f.name} must be an int >= {low}, got {v!r}")
        if (self.melody_levels == 0) != (self.melody_codes == 0):
            raise ValueError(f"TokenSizes.melody_levels ({self.melody_levels}) and melody_codes ({self.melody_codes}) "
                             "must both be 0 (no melody conditioning) or both positive")
        if self.melody_aligned and (self.melody_levels != 1 or "semantic" not in self.melody_stages):
            raise ValueError("TokenSizes.melody_aligned needs one melody stream (melody_levels = 1, a pitch-class "
                             f"melody) read by the semantic stage, got melody_levels {self.melody_levels}, "
                             f"melody_stages {self.melody_stages}")
        if not self.coarse_levels < self.codec_levels:
            raise ValueError(f"TokenSizes.coarse_levels ({self.coarse_levels}) must be < codec_levels "
                             f"({self.codec_levels}) so the fine stage has levels left to predict")

    @property
    def fine_levels(self) -> int:
        return self.codec_levels - self.coarse_levels

    @property
    def has_melody(self) -> bool:
        return self.melody_levels > 0

    @property
    def has_beat(self) -> bool:
        return self.beat_phases > 0

    @property
    def has_key(self) -> bool:
        return bool(self.key_stages)


# Paper sizes and the tiny ones used by CPU tests and `--tiny` demos.
PAPER = TokenSizes()
TINY = TokenSizes(mulan_levels=2, mulan_codes=8, semantic_codes=16, codec_levels=4, codec_codes=16, coarse_levels=2,
                  vocab_multiple=1)
# The quickstart's trained tokenizers (gin/models/stage_quickstart.gin): MuLan RVQ 4 x 16, 64 k-means clusters of
# tiny w2v-BERT, the first 4 levels of the frame-rate codec's 8 x 1024, of which 2 coarse.
QUICKSTART = TokenSizes(mulan_levels=4, mulan_codes=16, semantic_codes=64, codec_levels=4, codec_codes=1024,
                        coarse_levels=2, vocab_multiple=1)
# The same with melody conditioning (semantic and coarse stages): the tiny random melody embedder's 2 x 8 tokens
# (melody.api.tiny_config), and gin/models/melody_tiny.gin's 4 x 64.
TINY_MELODY = dataclasses.replace(TINY, melody_levels=2, melody_codes=8)
QUICKSTART_MELODY = dataclasses.replace(QUICKSTART, melody_levels=4, melody_codes=64)
# With tempo conditioning of the semantic stage (8 beat phases per beat).
TINY_BEAT = dataclasses.replace(TINY, beat_phases=8)
QUICKSTART_BEAT = dataclasses.replace(QUICKSTART, beat_phases=8)
# With the stated key too, in the semantic and coarse stages' prefixes.
TINY_KEY = dataclasses.replace(TINY_BEAT, key_stages=("semantic", "coarse"))
QUICKSTART_KEY = dataclasses.replace(QUICKSTART_BEAT, key_stages=("semantic", "coarse"))
# With the coarse stage told the tempo too (its prefix's tempo tokens, each acoustic frame's beat phase).
TINY_COARSE_BEAT = dataclasses.replace(TINY_KEY, beat_stages=("semantic", "coarse"))
QUICKSTART_COARSE_BEAT = dataclasses.replace(QUICKSTART_KEY, beat_stages=("semantic", "coarse"))

# With the pitch-class melody (melody/pitch.py: 12 pitch classes + rest, 6.25 Hz) in the semantic stage's prefix
# and as each semantic frame's aligned id; the coarse stage hears it through the semantic tokens.
TINY_PITCH = dataclasses.replace(TINY_KEY, melody_levels=1, melody_codes=13, melody_stages=("semantic",),
                                 melody_aligned=True)
QUICKSTART_PITCH = dataclasses.replace(QUICKSTART_KEY, melody_levels=1, melody_codes=13, melody_stages=("semantic",),
                                       melody_aligned=True)

# Tempo tokens: the beat period in semantic frames on a log grid (TEMPO_STEPS per octave over [TEMPO_FRAMES)),
# so the layout needs no frame rate (25 Hz: 23-750 BPM; quantisation error <= 0.7 %), and the crop's start phase
# in START_PHASES steps of a beat.
TEMPO_FRAMES = (2.0, 64.0)
TEMPO_STEPS = 48
TEMPO_IDS = int(round(np.log2(TEMPO_FRAMES[1] / TEMPO_FRAMES[0]) * TEMPO_STEPS)) + 1
START_PHASES = 32
# Key tokens: tonic pitch class x 2 + (1 for minor), as musical_key.key_index; -1: unknown.
KEY_IDS = NUM_KEYS


def tempo_of(bpm, start_seconds, frame_rate: float) -> np.ndarray:
    """The semantic stage's tempo conditioning [b, 2] (frames per beat, beat phase of the crop's first frame in
    [0, 1)) of a crop starting `start_seconds` into music at `bpm` whose beat 0 is at 0 s; bpm <= 0 or NaN:
    unknown (frames per beat 0)."""
    bpm = np.atleast_1d(np.asarray(bpm, np.float64))
    start = np.broadcast_to(np.asarray(start_seconds, np.float64), bpm.shape)
    known = np.isfinite(bpm) & (bpm > 0)
    safe = np.where(known, bpm, 1.0)
    frames = np.where(known, 60.0 * frame_rate / safe, 0.0)
    phase = np.where(known, np.mod(start * safe / 60.0, 1.0), 0.0)
    return np.stack([frames, phase], axis=-1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class StageMask:
    """`logit_mask_fn(step, logits)` for sampling: at target position `step + phase` only the id range of that
    position's codebook stays. Hashable and comparable, so decoding compiles once per layout, not per call."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]
    phase: int = 0

    def __call__(self, step, logits):
        k = (step + self.phase) % len(self.starts)
        lo = jnp.asarray(self.starts, jnp.int32)[k]
        hi = jnp.asarray(self.stops, jnp.int32)[k]
        ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)
        return jnp.where((ids >= lo) & (ids < hi), logits, NEG_INF)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StageLayout:
    """The id layout of one stage (`semantic`, `coarse` or `fine`) for the given tokenizer sizes."""

    stage: str
    sizes: TokenSizes = PAPER

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}: use one of {STAGES}")
        if not isinstance(self.sizes, TokenSizes):
            raise ValueError(f"StageLayout.sizes must be a TokenSizes, got {type(self.sizes).__name__}")

    # -- id ranges ---------------------------------------------------------------------------------------------
    @functools.cached_property
    def streams(self) -> dict[str, tuple[int, int]]:
        """Stream name ('mulan0', .., 'semantic', 'acoustic0', ..) -> [start, stop) id range, in id order."""
        s = self.sizes
        sizes = []
        if self.stage in ("semantic", "coarse"):
            sizes += [(f"mulan{q}", s.mulan_codes) for q in range(s.mulan_levels)]
            sizes += [("semantic", s.semantic_codes)]
        if self.stage == "coarse":
            sizes += [(f"acoustic{q}", s.codec_codes) for q in range(s.coarse_levels)]
        if self.stage == "fine":
            sizes += [(f"acoustic{q}", s.codec_codes) for q in range(s.codec_levels)]
        if self.has_melody:
            sizes += [(f"melody{q}", s.melody_codes) for q in range(s.melody_levels)]
        if self.has_key:
            sizes += [("key", KEY_IDS)]
        if self.has_beat:
            sizes += [("tempo", TEMPO_IDS), ("beat_start", START_PHASES)]
        out, start = {}, NUM_SPECIAL
        for name, n in sizes:
            out[name] = (start, start + n)
            start += n
        return out

    def offset(self, stream: str) -> int:
        if stream not in self.streams:
            raise ValueError(f"the {self.stage} stage has no stream {stream!r}; it has {list(self.streams)}")
        return self.streams[stream][0]

    @property
    def num_ids(self) -> int:
        """Ids actually used (specials + all streams)."""
        return max(stop for _, stop in self.streams.values())

    @property
    def vocab_size(self) -> int:
        m = self.sizes.vocab_multiple
        return -(-self.num_ids // m) * m

    @property
    def target_levels(self) -> tuple[int, ...]:
        """Codec levels predicted by this stage (empty for the semantic stage)."""
        s = self.sizes
        return {"semantic": (), "coarse": tuple(range(s.coarse_levels)),
                "fine": tuple(range(s.coarse_levels, s.codec_levels))}[self.stage]

    def _target_streams(self) -> list[str]:
        return ["semantic"] if self.stage == "semantic" else [f"acoustic{q}" for q in self.target_levels]

    @property
    def tokens_per_frame(self) -> int:
        """Target tokens per time step (1 semantic token, or one per predicted codec level)."""
        return len(self._target_streams())

    def cond_span(self) -> tuple[int, int]:
        """[start, stop) positions of the MuLan tokens inside `inputs` (what guidance drops); (0, 0) for fine."""
        return (0, self.sizes.mulan_levels) if self.stage != "fine" else (0, 0)

    @property
    def has_melody(self) -> bool:
        """Whether this stage's prefix holds melody tokens (melody_levels > 0 and the stage in melody_stages)."""
        return self.sizes.has_melody and self.stage in self.sizes.melody_stages

    @property
    def has_beat(self) -> bool:
        """Whether this stage reads tempo conditioning: beat_phases > 0 and the stage in TokenSizes.beat_stages. Its
        prefix ends with two tempo tokens (beat period in semantic frames, start phase) before SEP, and each target
        gets its beat phase as a time-aligned id (`aligned_ids`), so the beat is where the frames are, not a global
        hint."""
        return self.sizes.has_beat and self.stage in self.sizes.beat_stages

    @property
    def needs_aligned(self) -> bool:
        """Whether this stage's LM must read aligned ids: a stage with tempo, or a semantic stage with aligned
        melody (a coarse stage without tempo may read its semantic tokens aligned or not: its model config says)."""
        return self.has_beat or self.melody_aligned

    @property
    def melody_aligned(self) -> bool:
        """Whether each target also reads the melody token of its time (TokenSizes.melody_aligned, semantic)."""
        return self.sizes.melody_aligned and self.stage == "semantic"

    @property
    def has_key(self) -> bool:
        """Whether this stage's prefix holds the stated key (TokenSizes.key_stages): one token after the melody
        tokens and before the tempo tokens (so those stay last before SEP)."""
        return self.sizes.has_key and self.stage in self.sizes.key_stages

    def key_ids(self) -> tuple[int, int]:
        """[lo, hi) of the key token ids (`TokenLM.key_ids`: key dropout finds them by id); (0, 0) without."""
        return self.streams["key"] if self.has_key else (0, 0)

    def encode_key(self, key):
        """Key indices [b] (tonic pitch class x 2 + minor, `musical_key.key_index`; -1: unknown) -> ids [b, 1]."""
        if not self.has_key:
            raise ValueError(f"the {self.stage} stage of these token sizes has no key conditioning (TokenSizes "
                             "key_stages does not name it)")
        key = np.asarray(key)
        if key.ndim != 1 or not np.issubdtype(key.dtype, np.integer) or key.size and (
                key.min() < -1 or key.max() >= KEY_IDS):
            raise ValueError(f"key must be int [batch] in [-1, {KEY_IDS}) (musical_key.key_index; -1: unknown), got "
                             f"{key.dtype} {key.shape}")
        return np.where(key >= 0, self.offset("key") + key, UNCOND).astype(np.int32)[:, None]

    def tempo_ids(self) -> tuple[int, int]:
        """[lo, hi) of the tempo token ids (`TokenLM.tempo_ids`: tempo dropout finds them by id); (0, 0) without."""
        return (self.offset("tempo"), self.streams["beat_start"][1]) if self.has_beat else (0, 0)

    def encode_tempo(self, tempo):
        """Tempo conditioning [b, 2] (`tempo_of`: frames per beat, start phase) -> ids [b, 2]; unknown -> UNCOND."""
        if not self.has_beat:
            raise ValueError(f"the {self.stage} stage of these token sizes has no tempo conditioning (TokenSizes "
                             "beat_phases = 0, or the stage is not in beat_stages)")
        tempo = np.asarray(tempo, np.float64)
        if tempo.ndim != 2 or tempo.shape[1] != 2:
            raise ValueError(f"tempo must be [batch, 2] (frames per beat, start phase; lm.stages.tempo_of), got "
                             f"{tempo.shape}")
        frames, phase = tempo[:, 0], tempo[:, 1]
        known = np.isfinite(frames) & (frames > 0)
        lo, hi = TEMPO_FRAMES
        step = np.round(np.log2(np.clip(np.where(known, frames, lo), lo, hi) / lo) * TEMPO_STEPS)
        start = np.round(np.mod(np.nan_to_num(phase), 1.0) * START_PHASES) % START_PHASES
        ids = np.stack([self.offset("tempo") + step, self.offset("beat_start") + start], axis=1)
        return np.where(known[:, None], ids, UNCOND).astype(np.int32)

    def no_tempo(self, batch: int) -> np.ndarray:
        """Tempo conditioning meaning "unknown tempo" ([batch, 2] of 0)."""
        return np.zeros((batch, 2), np.float32)

    def melody_ids(self) -> tuple[int, int]:
        """[lo, hi) of this stage's melody token ids, for `TokenLM.melody_ids` (melody dropout finds the melody
        tokens by id, wherever the prefix holds them); (0, 0) when the stage has none."""
        if not self.has_melody:
            return (0, 0)
        return (self.offset("melody0"), self.streams[f"melody{self.sizes.melody_levels - 1}"][1])

    # -- building sequences ------------------------------------------------------------------------------------
    def _xp(self, x):
        return jnp if isinstance(x, jax.Array) else np

    def _check(self, name, x, ndim, upper, levels=None):
        xp = self._xp(x)
        x = xp.asarray(x)
        if x.ndim != ndim or (levels is not None and x.shape[-1] != levels):
            want = "[batch, frames, levels]" if ndim == 3 else "[batch, n]"
            raise ValueError(f"{self.stage} stage: {name} must be int {want}"
                             f"{'' if levels is None else f' with {levels} levels'}, got shape {x.shape}")
        try:
            bad = x.size and (int(x.min()) < 0 or int(x.max()) >= upper)
        except jax.errors.ConcretizationTypeError:  # traced inside a jit: cannot check here
            bad = False
        if bad:
            raise ValueError(f"{self.stage} stage: {name} ids must be in [0, {upper}); got "
                             f"[{int(x.min())}, {int(x.max())}] (wrong tokenizer sizes for this layout?)")
        return x.astype(xp.int32)

    def encode_mulan(self, mulan):
        """Raw MuLan tokens [b, Qm] -> stage ids (level q offset into its own range)."""
        s = self.sizes
        m = self._check("mulan", mulan, 2, s.mulan_codes, s.mulan_levels)
        xp = self._xp(m)
        return m + self.offset("mulan0") + xp.arange(s.mulan_levels, dtype=xp.int32) * s.mulan_codes

    def encode_melody(self, melody):
        """Raw melody tokens [b, frames, Ql] (-1: no melody) -> frame-major ids [b, frames * Ql]; -1 -> UNCOND."""
        if not self.has_melody:
            raise ValueError(f"the {self.stage} stage of these token sizes has no melody conditioning (TokenSizes "
                             "melody_levels = 0, or the stage is not in melody_stages)")
        s = self.sizes
        xp = self._xp(melody)
        melody = xp.asarray(melody)
        absent = melody == -1
        m = self._check("melody", xp.where(absent, 0, melody), 3, s.melody_codes, s.melody_levels)
        ids = m + self.offset("melody0") + xp.arange(s.melody_levels, dtype=xp.int32) * s.melody_codes
        return xp.where(absent, UNCOND, ids).astype(xp.int32).reshape(m.shape[0], -1)

    def no_melody(self, batch: int, frames: int) -> np.ndarray:
        """Raw melody tokens meaning "no melody" ([batch, frames, Ql] of -1): text-only conditioning."""
        return np.full((batch, frames, self.sizes.melody_levels), -1, np.int32)

    def encode_semantic(self, semantic):
        s = self._check("semantic", semantic, 2, self.sizes.semantic_codes)
        return s + self.offset("semantic")

    def encode_acoustic(self, codes, levels: tuple[int, ...]):
        """Raw codes [b, frames, len(levels)] -> frame-major flat ids [b, frames * len(levels)]."""
        a = self._check("acoustic", codes, 3, self.sizes.codec_codes, len(levels))
        xp = self._xp(a)
        offsets = xp.asarray([self.offset(f"acoustic{q}") for q in levels], xp.int32)
        return (a + offsets).reshape(a.shape[0], -1)

    def _sep(self, x):
        xp = self._xp(x)
        return xp.full((x.shape[0], 1), SEP, xp.int32)

    def build_inputs(self, *, mulan=None, semantic=None, coarse=None, melody=None, tempo=None, key=None):
        """The conditioning prefix (ends with SEP): semantic: M; coarse: M, S; then melody [b, frames, Ql] when the
        stage is melody-conditioned (required, -1 codes for none); then, with key conditioning, the key token of
        `key` [b] (None: unknown); then, with tempo conditioning, the two tempo tokens of `tempo` [b, 2]
        (`tempo_of`; None: unknown tempo); fine: A[:, :, :Qc] (`coarse`)."""
        if key is not None and not self.has_key:
            raise ValueError(f"the {self.stage} stage of these token sizes takes no key (TokenSizes key_stages does "
                             "not name it)")
        if tempo is not None and not self.has_beat:
            raise ValueError(f"the {self.stage} stage of these token sizes takes no tempo (TokenSizes beat_phases = 0,"
                             " or the stage is not in beat_stages)")
        if melody is not None and not self.has_melody:
            raise ValueError(f"the {self.stage} stage of these token sizes takes no melody tokens (TokenSizes "
                             "melody_levels = 0, or the stage is not in melody_stages)")
        if self.has_melody and melody is None:
            raise ValueError(f"this {self.stage} stage is melody-conditioned: pass melody=[b, frames, Ql] (all -1 "
                             "for text only: layout.no_melody(batch, frames))")
        if self.stage == "fine":
            if coarse is None:
                raise ValueError("the fine stage is conditioned on the coarse codes: pass coarse=[b, frames, Qc]")
            parts = [self.encode_acoustic(coarse, tuple(range(self.sizes.coarse_levels)))]
        else:
            if mulan is None or (self.stage == "coarse" and semantic is None):
                raise ValueError(f"the {self.stage} stage needs mulan=[b, Qm]"
                                 f"{' and semantic=[b, frames]' if self.stage == 'coarse' else ''}")
            parts = [self.encode_mulan(mulan)]
            if self.stage == "coarse":
                parts.append(self.encode_semantic(semantic))
            if self.has_melody:
                parts.append(self.encode_melody(melody))
            if self.has_key:
                ids = self.encode_key(np.full(parts[0].shape[0], -1) if key is None else key)
                parts.append(self._xp(parts[0]).asarray(ids))
            if self.has_beat:
                ids = self.encode_tempo(self.no_tempo(parts[0].shape[0]) if tempo is None else tempo)
                parts.append(self._xp(parts[0]).asarray(ids))
        xp = self._xp(parts[0])
        return xp.concatenate(parts + [self._sep(parts[0])], axis=1)

    def uncond_inputs(self, inputs, drop_tempo: bool = False, drop_key: bool = False, drop_melody: bool = False):
        """`inputs` with the MuLan tokens replaced by UNCOND: the prompt of the unconditional guidance branch.
        `drop_tempo`: the tempo tokens too (its aligned ids are then all -1), so guidance also sharpens the beat;
        `drop_key`: the key token too; `drop_melody`: the melody tokens too (and their aligned ids)."""
        start, stop = self.cond_span()
        if stop == start:
            raise ValueError("the fine stage has no MuLan conditioning: guidance applies to semantic and coarse")
        xp = self._xp(inputs)
        pos = xp.arange(inputs.shape[1])
        drop = (pos >= start) & (pos < stop)
        if drop_tempo and self.has_beat:
            lo, hi = self.tempo_ids()
            drop = drop | ((inputs >= lo) & (inputs < hi))
        if drop_key and self.has_key:
            lo, hi = self.key_ids()
            drop = drop | ((inputs >= lo) & (inputs < hi))
        if drop_melody and self.has_melody:
            lo, hi = self.melody_ids()
            drop = drop | ((inputs >= lo) & (inputs < hi))
        return xp.where(drop, UNCOND, inputs).astype(xp.int32)

    def build_targets(self, *, semantic=None, acoustic=None):
        """The predicted ids: semantic: S; coarse: A[:, :, :Qc]; fine: A[:, :, Qc:] (flattened frame-major).

        `acoustic` may hold all Q levels or exactly the levels this stage predicts."""
        if self.stage == "semantic":
            if semantic is None:
                raise ValueError("the semantic stage predicts semantic tokens: pass semantic=[b, frames]")
            return self.encode_semantic(semantic)
        if acoustic is None:
            raise ValueError(f"the {self.stage} stage predicts codec codes: pass acoustic=[b, frames, levels]")
        levels = self.target_levels
        if np.ndim(acoustic) == 3 and np.shape(acoustic)[-1] == self.sizes.codec_levels:
            acoustic = acoustic[..., levels[0]:levels[-1] + 1]
        return self.encode_acoustic(acoustic, levels)

    def build(self, *, mulan=None, semantic=None, acoustic=None, melody=None, tempo=None, key=None):
        """(inputs, targets) for training from raw token arrays of one aligned crop.

        semantic: mulan [b, Qm], semantic [b, Ts] (+ tempo [b, 2] with tempo conditioning); coarse: + acoustic
        [b, Ta, >= Qc]; both + melody [b, F, Ql] when the stage is melody-conditioned and key [b] when it is
        key-conditioned (other stages ignore `key`); fine: acoustic [b, Ta, Q]."""
        key = key if self.has_key else None
        if self.stage == "semantic":
            return (self.build_inputs(mulan=mulan, melody=melody, tempo=tempo, key=key),
                    self.build_targets(semantic=semantic))
        if acoustic is None or np.ndim(acoustic) != 3:
            raise ValueError(f"the {self.stage} stage needs acoustic=[b, frames, levels] codec codes")
        if self.stage == "coarse":
            return (self.build_inputs(mulan=mulan, semantic=semantic, melody=melody, key=key,
                                      tempo=tempo if self.has_beat else None),
                    self.build_targets(acoustic=acoustic))
        if np.shape(acoustic)[-1] != self.sizes.codec_levels:
            raise ValueError(f"the fine stage needs all {self.sizes.codec_levels} codec levels, got "
                             f"{np.shape(acoustic)[-1]}")
        coarse = acoustic[..., :self.sizes.coarse_levels]
        return self.build_inputs(coarse=coarse), self.build_targets(acoustic=acoustic)

    def aligned_ids(self, inputs, num_targets: int):
        """Time-aligned conditioning of the coarse stage -> int32 [b, P + num_targets - 1], -1 where there is none.

        The model reads `concat(inputs, targets[:, :-1])`; position P - 1 + j predicts target j, and gets the
        semantic id of target j's time added to its embedding (TransformerConfig.aligned_inputs), so each acoustic
        frame sees the semantic token it sounds with instead of finding it by attention. `inputs` [b, P] hold
        M, S, (the key token,) (the two tempo tokens,) SEP; the Ts semantic tokens and the num_targets / Qc acoustic
        frames span the same time, so frame f reads semantic token (f * Ts) // Ta. With tempo conditioning a second
        channel holds each frame's beat phase (ids [0, beat_phases): rows the coarse stage's semantic ids never use)
        -> [b, L, 2]."""
        if self.stage == "semantic" and (self.has_beat or self.melody_aligned):
            return self._semantic_ids(inputs, num_targets)
        if self.stage != "coarse":
            raise ValueError(f"time-aligned conditioning is defined for the coarse stage (semantic tokens over "
                             f"acoustic frames) and the semantic stage with tempo conditioning (TokenSizes "
                             f"beat_phases > 0 or melody_aligned), not the {self.stage} stage")
        if self.has_melody:
            raise ValueError("time-aligned conditioning of a melody-conditioned coarse stage is not supported: use "
                             "TokenSizes.melody_stages = ('semantic',) with ALIGNED")
        xp = self._xp(inputs)
        inputs = xp.asarray(inputs)
        k, start = self.tokens_per_frame, self.sizes.mulan_levels
        ts = inputs.shape[1] - 1 - start - int(self.has_key) - 2 * int(self.has_beat)
        if inputs.ndim != 2 or ts < 1 or num_targets < 1:
            raise ValueError(f"coarse stage: aligned_ids needs inputs [b, Qm + Ts (+ 1 key) (+ 2 tempo) + 1] with "
                             f"Ts >= 1 and num_targets >= 1, got inputs {inputs.shape}, num_targets {num_targets}")
        frames = -(-num_targets // k)
        idx = start + (np.arange(num_targets) // k * ts) // frames
        ids = inputs[:, idx].astype(xp.int32)
        ids = xp.concatenate([xp.full((inputs.shape[0], inputs.shape[1] - 1), -1, xp.int32), ids], axis=1)
        if not self.has_beat:
            return ids
        if self.sizes.beat_phases > self.offset("semantic"):
            raise ValueError(f"coarse stage: beat_phases ({self.sizes.beat_phases}) must be <= the first semantic id "
                             f"({self.offset('semantic')}): the beat phases use the aligned rows below it")
        # Target j sounds at semantic frame (j // k) * Ts / frames of the crop: its beat phase.
        at = (np.arange(num_targets) // k) * (ts / frames)
        return xp.stack([ids, self._beat_ids(inputs, num_targets, at)], axis=-1)

    def _semantic_ids(self, inputs, num_targets: int):
        """The semantic stage's aligned ids: the beat phase (ids [0, beat_phases)) and, with melody_aligned, the
        pitch-class melody token of the target's time (ids beat_phases + code; frame j of the crop reads melody
        frame (j * F) // num_targets of the F in the prefix). One channel -> [b, L]; both -> [b, L, 2]."""
        xp = self._xp(inputs)
        inputs = xp.asarray(inputs)
        channels = [self._beat_ids(inputs, num_targets)] if self.has_beat else []
        if self.melody_aligned:
            start = self.sizes.mulan_levels
            frames = inputs.shape[1] - 1 - start - int(self.has_key) - 2 * int(self.has_beat)
            if inputs.ndim != 2 or frames < 1 or num_targets < 1:
                raise ValueError(f"semantic stage: aligned_ids needs inputs [b, Qm + F melody (+ key) (+ 2 tempo) + 1]"
                                 f" with F >= 1 and num_targets >= 1, got inputs {inputs.shape}, num_targets "
                                 f"{num_targets}")
            idx = start + (np.arange(num_targets) * frames) // num_targets
            code = inputs[:, idx] - self.offset("melody0")
            ids = xp.where((code >= 0) & (code < self.sizes.melody_codes), code + self.sizes.beat_phases, -1)
            channels.append(xp.concatenate([xp.full((inputs.shape[0], inputs.shape[1] - 1), -1, xp.int32),
                                            ids.astype(xp.int32)], axis=1))
        return channels[0] if len(channels) == 1 else xp.stack(channels, axis=-1)

    def _beat_ids(self, inputs, num_targets: int, at=None):
        """Beat phases: target j, at semantic frame `at[j]` of the crop (default j: the semantic stage), gets the
        id of its phase within the beat, in beat_phases steps, from the two tempo tokens before SEP (-1 for the
        prefix and unknown tempo)."""
        xp = self._xp(inputs)
        inputs = xp.asarray(inputs)
        if inputs.ndim != 2 or inputs.shape[1] < 3 or num_targets < 1:
            raise ValueError(f"semantic stage: aligned_ids needs inputs [b, P >= 3] ending with the tempo tokens and "
                             f"SEP, and num_targets >= 1, got inputs {inputs.shape}, num_targets {num_targets}")
        step = inputs[:, -3] - self.offset("tempo")
        start = inputs[:, -2] - self.offset("beat_start")
        known = (step >= 0) & (step < TEMPO_IDS) & (start >= 0) & (start < START_PHASES)
        frames = TEMPO_FRAMES[0] * 2.0 ** (xp.clip(step, 0, TEMPO_IDS - 1).astype(xp.float32) / TEMPO_STEPS)
        phase0 = xp.clip(start, 0, START_PHASES - 1).astype(xp.float32) / START_PHASES
        at = xp.arange(num_targets, dtype=xp.float32) if at is None else xp.asarray(at, xp.float32)
        phase = phase0[:, None] + at[None, :] / frames[:, None]
        ids = xp.floor(xp.mod(phase, 1.0) * self.sizes.beat_phases).astype(xp.int32) % self.sizes.beat_phases
        ids = xp.where(known[:, None], ids, -1).astype(xp.int32)
        return xp.concatenate([xp.full((inputs.shape[0], inputs.shape[1] - 1), -1, xp.int32), ids], axis=1)

    # -- back to raw codes -------------------------------------------------------------------------------------
    def targets_to_codes(self, ids):
        """Generated target ids [b, n] -> raw codes: semantic [b, n]; acoustic [b, n / levels, levels].

        Raises if an id lies outside its position's range (a decode that ignored the logit mask)."""
        ids = np.asarray(ids)
        streams = self._target_streams()
        k = len(streams)
        if ids.ndim != 2 or ids.shape[1] % k:
            raise ValueError(f"{self.stage} targets must be [batch, n] with n a multiple of {k}, got {ids.shape}")
        frames = ids.reshape(ids.shape[0], -1, k)
        starts = np.asarray([self.streams[s][0] for s in streams])
        stops = np.asarray([self.streams[s][1] for s in streams])
        if frames.size and ((frames < starts).any() or (frames >= stops).any()):
            raise ValueError(f"{self.stage} targets hold ids outside their codebook's range: decode with "
                             "logit_mask_fn=layout.logit_mask()")
        codes = (frames - starts).astype(np.int32)
        return codes[..., 0] if self.stage == "semantic" else codes

    def logit_mask(self, phase: int = 0) -> StageMask:
        """The mask for sampling targets; `phase` = target tokens already in the prompt (continuation)."""
        streams = self._target_streams()
        return StageMask(tuple(self.streams[s][0] for s in streams), tuple(self.streams[s][1] for s in streams),
                         phase % len(streams))


def layouts(sizes: TokenSizes = PAPER) -> dict[str, StageLayout]:
    """{stage: StageLayout} for all three stages."""
    return {name: StageLayout(name, sizes) for name in STAGES}


# -- gin helpers: the stage gin files read vocab size and conditioning span from the layout ------------------------
@gin.configurable
def stage_vocab_size(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None) -> int:
    """`TransformerConfig.vocab_size = @stage_vocab_size()` (sizes: the gin-bound TokenSizes)."""
    return StageLayout(stage, sizes or TokenSizes()).vocab_size


@gin.configurable
def stage_cond_span(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None) -> tuple[int, int]:
    """`TokenLM.uncond_span = @stage_cond_span()`: where classifier-free-guidance dropout writes UNCOND."""
    return StageLayout(stage, sizes or TokenSizes()).cond_span()


@gin.configurable
def stage_melody_ids(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None) -> tuple[int, int]:
    """`TokenLM.melody_ids = @stage_melody_ids()`: the ids melody-conditioning dropout turns into UNCOND."""
    return StageLayout(stage, sizes or TokenSizes()).melody_ids()


@gin.configurable
def stage_melody_prob(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None, prob: float = 0.0) -> float:
    """The melody-dropout probability of a stage: `prob` where its prefix holds melody tokens, else 0."""
    return prob if StageLayout(stage, sizes or TokenSizes()).has_melody else 0.0


@gin.configurable
def stage_uncond_prob(stage: str = gin.REQUIRED, prob: float = 0.1) -> float:
    """The conditioning-dropout probability of a stage: `prob`, or 0 for the fine stage (it has no MuLan input)."""
    return 0.0 if stage == "fine" else prob


@gin.configurable
def stage_aligned(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None,
                  enabled: bool = False) -> StageLayout | None:
    """`TokenLM.aligned = @stage_aligned()`: the stage's layout when time-aligned conditioning is on, else None."""
    if not enabled:
        return None
    layout = StageLayout(stage, sizes or TokenSizes())
    if not layout.needs_aligned:
        # A coarse probe (MuLan, one semantic token, the key token when there is one, SEP): other stages raise.
        layout.aligned_ids(np.zeros((1, layout.sizes.mulan_levels + 2 + layout.has_key), np.int32), 2)
    return layout


@gin.configurable
def stage_key_ids(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None) -> tuple[int, int]:
    """`TokenLM.key_ids = @stage_key_ids()`: the ids key-conditioning dropout turns into UNCOND."""
    return StageLayout(stage, sizes or TokenSizes()).key_ids()


@gin.configurable
def stage_tempo_ids(stage: str = gin.REQUIRED, sizes: TokenSizes | None = None) -> tuple[int, int]:
    """`TokenLM.tempo_ids = @stage_tempo_ids()`: the ids tempo-conditioning dropout turns into UNCOND."""
    return StageLayout(stage, sizes or TokenSizes()).tempo_ids()
