"""`MusicLM`: text in, music out. Chains MuLan -> semantic LM -> coarse LM -> fine LM -> SoundStream decoder.

    lm = MusicLM.from_pretrained("weights/musiclm")          # mulan/ codec/ stage_semantic/ stage_coarse/ stage_fine/
    waves = lm.generate(["a calm piano waltz"], duration_s=10, seed=0)    # float32 [1, 10 * lm.sample_rate]
    out = lm.generate_full(prompts, 10, num_samples=4)     # + all samples, MuLan scores, tokens (best first)
    waves = lm.generate_continuation(prompts, audio, sample_rate, duration_s=20)
    waves = lm.generate_story([("calm piano", 10), ("energetic drums", 10)])
    waves = lm.generate(["a jazz trio"], 8, melody=hum, melody_sample_rate=sr)   # a melody-conditioned model

Each stage LM is trained on fixed crops (paper: semantic 30 s, coarse 10 s, fine 3 s). Longer audio is decoded in
sliding windows: the next window starts `prefix` seconds before the generated end (paper: 15 s prefix, 15 s
stride for 30 s semantic windows), keeps those tokens as its prompt, and samples the rest. Every window of every
stage draws from `fold_in(key(seed), stage, window)`, so the same seed gives the same audio. `seed` is one int for
the whole call (all rows share its key) or one int per prompt: then each prompt's rows draw only from their own
key (`decoding.sample_keys`, then stage and window), so a prompt's audio does not depend on the batch it is in:
`generate(["a", "b"], d, seed=[3, 4])` gives `generate(["a"], d, seed=3)` and `generate(["b"], d, seed=4)`.

Melody conditioning (a model whose musiclm.json sizes have melody_levels > 0 and a `melody/` embedder): the melody's
tokens (`Melody.frame_tokens`, a time stream) condition the stages of `TokenSizes.melody_stages` (semantic, and
by default coarse) window by window at the same seconds;
past the melody's end, and without a melody, the melody part is "no melody" (UNCOND) and the text alone conditions.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.lm import decoding
from musiclm_jax.lm import stages as st
from musiclm_jax.lm import transformer as tr
from musiclm_jax.sampling import MAX_DURATION_S, SAMPLING_DEFAULTS, check_duration  # noqa: F401 (re-exported)
from musiclm_jax.musical_key import check_key, key_from_text
from musiclm_jax.tempo import bpm_from_text, check_bpm

log = logging.getLogger(__name__)
MANIFEST = "musiclm.json"
STAGE_DIRS = {"semantic": "stage_semantic", "coarse": "stage_coarse", "fine": "stage_fine"}
MELODY_RATE = 2.0   # melody token frames per second without an embedder (the tasks' melody_rate)


@dataclasses.dataclass(frozen=True)
class Windows:
    """Training crop lengths (seconds) per stage and the kept prefix as a fraction of the crop (paper: 0.5)."""

    semantic_s: float = 30.0
    coarse_s: float = 10.0
    fine_s: float = 3.0
    prefix_fraction: float = 0.5

    def __post_init__(self):
        if min(self.semantic_s, self.coarse_s, self.fine_s) <= 0 or not 0.0 <= self.prefix_fraction < 1.0:
            raise ValueError(f"Windows: crop lengths must be > 0 and prefix_fraction in [0, 1), got {self}")


@dataclasses.dataclass
class Generation:
    """What `generate_full` returns. Samples of prompt i are sorted best first by MuLan score."""

    waves: np.ndarray          # [batch, samples]: the best sample per prompt
    all_waves: np.ndarray      # [batch, num_samples, samples]
    scores: np.ndarray         # [batch, num_samples] MuLan text-audio cosine (nan when not reranked)
    tokens: dict               # stage -> raw codes [batch, num_samples, ...] in the same order
    timings: dict              # stage -> seconds
    sample_rate: int
    bpm: list | None = None    # per prompt: the tempo the semantic stage was given (None: unknown; tempo-conditioned models)
    key: list | None = None    # per prompt: the key index the stages were given (None: unknown; key-conditioned models)


class MusicLM:
    """The generation API. Build with `from_pretrained(dir)` or from parts (`MusicLM(mulan=..., ...)`)."""

    def __init__(self, *, mulan, codec, semantic_lm: tr.Transformer, coarse_lm: tr.Transformer,
                 fine_lm: tr.Transformer, sizes: st.TokenSizes, semantic_rate: float,
                 windows: Windows = Windows(), semantic_tokenizer=None, sampling: dict | None = None,
                 unguided_stages: Sequence[str] = (), melody=None):
        """`unguided_stages`: stages whose LM decodes without guidance whatever guidance_scale says (a
        guidance-distilled stage: musiclm_jax/finetune/distill.py; musiclm.json "unguided_stages"). `melody`: the
        melody embedder with its quantizer (musiclm_jax.melody.api.Melody) of a melody-conditioned model."""
        self.mulan, self.codec, self.semantic_tokenizer = mulan, codec, semantic_tokenizer
        self.melody = melody
        if melody is not None and not sizes.has_melody:
            raise ValueError("a melody embedder was given but the token sizes have no melody conditioning "
                             "(melody_levels = 0): this model's stages do not read melody tokens")
        if melody is not None and (melody.cfg.rvq_levels, melody.cfg.rvq_codebook_size) != (
                sizes.melody_levels, sizes.melody_codes):
            raise ValueError(f"the melody embedder quantizes to {melody.cfg.rvq_levels} x "
                             f"{melody.cfg.rvq_codebook_size} but the token sizes say {sizes.melody_levels} x "
                             f"{sizes.melody_codes}: fix TokenSizes")
        unknown = sorted(set(sampling or {}) - set(SAMPLING_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(SAMPLING_DEFAULTS)}")
        self.sampling = {**SAMPLING_DEFAULTS, **(sampling or {})}
        self.sampling["temperatures"] = tuple(self.sampling["temperatures"])
        for setting in ("guide_key", "guide_tempo"):   # a bad value fails here, with one line
            guided_stages(self.sampling[setting], setting)
        self.unguided_stages = tuple(unguided_stages)
        if not set(self.unguided_stages) <= {"semantic", "coarse"}:
            raise ValueError(f"unguided_stages {list(self.unguided_stages)} must name guided stages: 'semantic' "
                             "and/or 'coarse'")
        self.layouts = st.layouts(sizes)
        self.models = {"semantic": semantic_lm, "coarse": coarse_lm, "fine": fine_lm}
        self.sizes, self.semantic_rate, self.windows = sizes, float(semantic_rate), windows
        for name, model in self.models.items():
            if model.cfg.vocab_size < self.layouts[name].num_ids:
                raise ValueError(f"the {name} LM has vocab_size {model.cfg.vocab_size} but its layout needs "
                                 f"{self.layouts[name].num_ids} ids: build it with vocab_size="
                                 f"{self.layouts[name].vocab_size}")
        if self.layouts["semantic"].needs_aligned != semantic_lm.cfg.aligned_inputs:
            raise ValueError("the token sizes' beat_phases / melody_aligned and the semantic LM disagree: a semantic "
                             "stage with tempo or aligned melody conditioning is trained with aligned_inputs, and "
                             "only it")
        if self.layouts["coarse"].needs_aligned and not coarse_lm.cfg.aligned_inputs:
            raise ValueError("the token sizes' beat_stages name the coarse stage but the coarse LM was trained without "
                             "aligned_inputs: a coarse stage told the tempo reads each frame's beat phase")
        # A codec with more levels than the layout is used at its first `codec_levels` (a lower bitrate).
        if codec.num_levels < sizes.codec_levels or codec.config.codebook_size != sizes.codec_codes:
            raise ValueError(f"the codec has {codec.num_levels} x {codec.config.codebook_size} codes but the token "
                             f"sizes say {sizes.codec_levels} x {sizes.codec_codes}: fix TokenSizes")
        if mulan.cfg.rvq_levels != sizes.mulan_levels or mulan.cfg.rvq_codebook_size != sizes.mulan_codes:
            raise ValueError(f"MuLan quantizes to {mulan.cfg.rvq_levels} x {mulan.cfg.rvq_codebook_size} but the "
                             f"token sizes say {sizes.mulan_levels} x {sizes.mulan_codes}: fix TokenSizes")

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def acoustic_rate(self) -> float:
        return self.codec.frame_rate

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | None = None, *, load_semantic_tokenizer: bool = True) -> "MusicLM":
        """Loads `<dir>/{mulan,codec,semantic,stage_semantic,stage_coarse,stage_fine}` and `<dir>/musiclm.json`;
        without a directory, the shipped weights (`weights/musiclm`, found relative to the package).

        musiclm.json: {"sizes": TokenSizes fields, "semantic_rate": Hz, "windows": Windows fields (optional),
        "sampling": the model's recommended decoding settings (optional; see SAMPLING_DEFAULTS),
        "unguided_stages": stages decoded without guidance (optional; a guidance-distilled model)}.
        Each stage directory is a `musiclm_jax.train` model_dir of a stage experiment (gin/experiments/stage_*):
        its Transformer is rebuilt from the config its checkpoint records. `semantic/` (w2v-BERT + k-means) is
        needed only by `generate_continuation`."""
        from musiclm_jax.codec.api import SoundStream
        from musiclm_jax.mulan.api import MuLan

        if model_dir is None:
            from musiclm_jax.resources import SHIPPED_MUSICLM, shipped_musiclm_dir

            if shipped_musiclm_dir() is None:
                raise ValueError(f"no shipped weights in {SHIPPED_MUSICLM} (this install has none): pass a model "
                                 "directory, or run `make quickstart` to train and export them")
            model_dir = str(shipped_musiclm_dir())
        path = os.path.join(model_dir, MANIFEST)
        if not os.path.exists(path):
            raise ValueError(f"{model_dir} has no {MANIFEST}: see `MusicLM.from_pretrained` for the directory layout")
        with open(path) as f:
            manifest = json.load(f)
        sizes = st.TokenSizes(**manifest["sizes"])
        lms = {name: load_stage_lm(os.path.join(model_dir, sub)) for name, sub in STAGE_DIRS.items()}
        semantic = melody = None
        if load_semantic_tokenizer and os.path.isdir(os.path.join(model_dir, "semantic")):
            from musiclm_jax.semantic.api import SemanticTokenizer
            semantic = SemanticTokenizer.from_checkpoint(os.path.join(model_dir, "semantic"))
        if sizes.has_melody:
            if not os.path.isdir(os.path.join(model_dir, "melody")):
                raise ValueError(f"{model_dir} is melody-conditioned (musiclm.json melody_levels > 0) but has no "
                                 "melody/ embedder: copy the `musiclm-jax melody train` model_dir there")
            from musiclm_jax.melody.api import load_melody_dir
            melody = load_melody_dir(os.path.join(model_dir, "melody"))
        return cls(mulan=MuLan.from_checkpoint(os.path.join(model_dir, "mulan")),
                   codec=SoundStream.from_checkpoint(os.path.join(model_dir, "codec")),
                   semantic_lm=lms["semantic"], coarse_lm=lms["coarse"], fine_lm=lms["fine"], sizes=sizes,
                   semantic_rate=manifest["semantic_rate"], windows=Windows(**manifest.get("windows", {})),
                   semantic_tokenizer=semantic, sampling=manifest.get("sampling"),
                   unguided_stages=manifest.get("unguided_stages", ()), melody=melody)

    # -- generation -----------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], duration_s: float, **kwargs) -> np.ndarray:
        """Captions -> float32 waves [batch, duration_s * sample_rate] (the best of `num_samples` per prompt).

        kwargs: temperatures (semantic, coarse, fine), top_k, top_p, guidance_scale (> 1 sharpens towards the text;
        semantic and coarse stages), guide_tempo (the guidance also sharpens a tempo-conditioned stage's beat;
        True, False, or the stages to do it in, as guide_key),
        guide_melody (the unconditional branch also loses the melody, so guidance sharpens it too),
        guide_key (the unconditional branch also loses the key of a key-conditioned stage; True, False, or the
        stages to do it in, e.g. ["coarse"]): each
        defaults to the model's own (`self.sampling`: musiclm.json's "sampling",
        else SAMPLING_DEFAULTS); num_samples=1, seed=0 (an int, or one int per prompt so that each prompt decodes
        as it would alone), progress=True, max_duration_s=MAX_DURATION_S; melody (a melody-conditioned model):
        one mono wave for all prompts, or a list of one per prompt (None items: text only), at
        melody_sample_rate; bpm (a tempo-conditioned model, `has_tempo`): one tempo for all prompts or one per
        prompt (None: unknown); by default each prompt's stated tempo (`tempo.bpm_from_text`); key (a
        key-conditioned model, `has_key`): a key name ("F# minor") or index (`musical_key.key_index`) for all
        prompts or one per prompt (None: unknown); by default each prompt's stated key (`musical_key.key_from_text`)."""
        return self.generate_full(prompts, duration_s, **kwargs).waves

    def generate_full(self, prompts: Sequence[str], duration_s: float, *, melody=None,
                      melody_sample_rate: int | None = None, bpm="text", key="text", **kwargs) -> Generation:
        mulan = self._text_tokens(prompts)
        melody_tokens = self.melody_tokens(melody, melody_sample_rate, len(mulan)) if melody is not None else None
        if isinstance(bpm, str) and bpm == "text":
            bpm = [bpm_from_text(p) for p in prompts] if self.has_tempo else None
        if isinstance(key, str) and key == "text":
            key = [key_from_text(p) for p in prompts] if self.has_key else None
        return self._run(lambda t: mulan, duration_s, prompts=list(prompts), melody=melody_tokens, bpm=bpm, key=key,
                         **kwargs)

    def prompt_tempo(self, prompts: Sequence[str]) -> np.ndarray | None:
        """The semantic stage's tempo conditioning [b, 2] of a window starting at 0 s, from each prompt's stated
        tempo (unknown where none); None for a model without tempo conditioning."""
        if not self.has_tempo:
            return None
        bpm = [bpm_from_text(p) for p in prompts]
        return st.tempo_of([np.nan if b is None else b for b in bpm], 0.0, self.semantic_rate)

    def prompt_key(self, prompts: Sequence[str]) -> np.ndarray | None:
        """Each prompt's stated key index [b] (-1 where none); None for a model without key conditioning."""
        if not self.has_key:
            return None
        return np.asarray([-1 if k is None else k for k in map(key_from_text, prompts)], np.int64)

    @property
    def has_key(self) -> bool:
        """Whether a stage reads the stated key (TokenSizes.key_stages): then `key=` steers it."""
        return self.sizes.has_key

    @property
    def has_tempo(self) -> bool:
        """Whether a stage reads a tempo (TokenSizes.beat_phases > 0, beat_stages): then `bpm=` steers it."""
        return any(self.layouts[s].has_beat for s in ("semantic", "coarse"))

    def melody_tokens(self, melody, sample_rate: int | None, batch: int) -> np.ndarray:
        """A melody wave [samples] (for every row) or a list of `batch` waves (None: text only) -> raw melody
        tokens [batch, frames, Ql], -1 where a row has no melody or its melody has ended."""
        from musiclm_jax.melody.api import check_melody_audio

        if self.melody is None:
            raise ValueError("this model is not melody-conditioned (no melody/ embedder, musiclm.json "
                             "melody_levels = 0): generate without melody=, or use a melody-conditioned model")
        if sample_rate is None or int(sample_rate) <= 0:
            raise ValueError("melody= needs melody_sample_rate= (the wave's sample rate in Hz)")
        waves = list(melody) if isinstance(melody, (list, tuple)) else [melody] * batch
        if len(waves) != batch:
            raise ValueError(f"{len(waves)} melodies for {batch} prompts: give one wave, or one per prompt")
        rows = [None if w is None else self.melody.frame_tokens(
            check_melody_audio(w, sample_rate, self.melody.cfg, f"melody {i}" if batch > 1 else "melody"),
            int(sample_rate)) for i, w in enumerate(waves)]
        frames = max([len(r) for r in rows if r is not None], default=1)
        out = np.full((batch, frames, self.sizes.melody_levels), -1, np.int32)
        for i, r in enumerate(rows):
            if r is not None:
                out[i, :len(r)] = r
        return out

    def generate_story(self, story: Sequence[tuple[str, float]], **kwargs) -> np.ndarray:
        """[(caption, seconds), ...] -> one wave [1, total * sample_rate] whose caption changes over time; each
        window after a change keeps the previous music as its prefix, so the music flows on."""
        if not story or any(not isinstance(p, str) or s <= 0 for p, s in story):
            raise ValueError("story must be a non-empty list of (caption, seconds > 0)")
        tokens = self._text_tokens([p for p, _ in story])
        ends = np.cumsum([s for _, s in story])

        def mulan_at(t):  # conditioning of the segment that time t falls in
            i = min(int(np.searchsorted(ends, t, side="right")), len(story) - 1)
            return tokens[i:i + 1]
        kwargs.setdefault("num_samples", 1)
        return self._run(mulan_at, float(ends[-1]), prompts=[story[-1][0]], boundaries=tuple(ends[:-1]),
                         **kwargs).waves

    def generate_continuation(self, prompts: Sequence[str], audio_prompt, sample_rate: int, duration_s: float,
                              **kwargs) -> np.ndarray:
        """Continues `audio_prompt` ([samples] or [batch, samples], one per prompt) up to `duration_s` in total.
        Its semantic and acoustic tokens are kept unchanged as the start of every stage's sequence."""
        if self.semantic_tokenizer is None:
            raise ValueError("continuation needs the semantic tokenizer (w2v-BERT + k-means): pass "
                             "semantic_tokenizer= or put it under <model_dir>/semantic")
        audio = np.asarray(audio_prompt, np.float32)
        audio = audio[None] if audio.ndim == 1 else audio
        if audio.shape[0] not in (1, len(prompts)):
            raise ValueError(f"audio_prompt has {audio.shape[0]} clips for {len(prompts)} prompts")
        audio = np.broadcast_to(audio, (len(prompts), audio.shape[1]))
        seconds = audio.shape[1] / sample_rate
        if seconds >= duration_s:
            raise ValueError(f"the audio prompt ({seconds:.2f} s) is already as long as duration_s={duration_s}")
        n_sem, n_ac = self._frames(seconds)
        semantic = self.semantic_tokenizer.tokens(audio, sample_rate)[:, :n_sem]
        codes = self.codec.encode(audio, sample_rate, num_levels=self.sizes.codec_levels)[:, :n_ac]
        n_sem, n_ac = min(n_sem, semantic.shape[1]), min(n_ac, codes.shape[1])
        known = {"semantic": semantic[:, :n_sem], "coarse": codes[:, :n_ac, :self.sizes.coarse_levels],
                 "fine": codes[:, :n_ac, self.sizes.coarse_levels:]}
        mulan = self._text_tokens(prompts)
        if self.has_tempo:
            kwargs.setdefault("bpm", [bpm_from_text(p) for p in prompts])
        if self.has_key:
            kwargs.setdefault("key", [key_from_text(p) for p in prompts])
        return self._run(lambda t: mulan, duration_s, prompts=list(prompts), known=known, **kwargs).waves

    def generate_from_tokens(self, mulan_tokens, duration_s: float, *, semantic=None, coarse=None,
                             prompts: Sequence[str] | None = None, melody=None, bpm=None, key=None,
                             **kwargs) -> Generation:
        """Generation from given tokens instead of text: MuLan conditioning tokens [batch, Qm] (e.g. a clip's
        `mulan.tokens_from_audio`, as in training), and optionally the whole semantic tokens [batch, Ts] and/or
        coarse codes [batch, Ta, coarse_levels] of `duration_s` (then those stages are not sampled: what the
        stage-by-stage diagnosis, `musiclm-jax eval chain`, uses). `prompts` only names rows for MuLan re-ranking
        (num_samples > 1). `melody`: raw melody tokens [batch, frames, Ql] (-1: none) of a melody-conditioned
        model. `bpm`, `key`: the tempo / key of a tempo- / key-conditioned model (default unknown). kwargs as
        `generate`."""
        mulan = np.asarray(mulan_tokens, np.int32)
        if mulan.ndim != 2 or mulan.shape[1] != self.sizes.mulan_levels:
            raise ValueError(f"mulan_tokens must be [batch, {self.sizes.mulan_levels}], got {mulan.shape}")
        known = {}
        n_sem, n_ac = self._frames(check_duration(duration_s, kwargs.get("max_duration_s", MAX_DURATION_S)))
        for name, value, frames, tail in (("semantic", semantic, n_sem, ()),
                                          ("coarse", coarse, n_ac, (self.sizes.coarse_levels,))):
            if value is None:
                continue
            value = np.asarray(value, np.int32)
            if value.shape[0] != mulan.shape[0] or value.shape[2:] != tail or value.shape[1] < frames:
                raise ValueError(f"{name} tokens must be [{mulan.shape[0]}, >= {frames}{', ' if tail else ''}"
                                 f"{', '.join(map(str, tail))}] for {duration_s} s, got {value.shape}")
            known[name] = value[:, :frames]
        if "coarse" in known and "semantic" not in known:
            raise ValueError("coarse tokens need the semantic tokens too (the coarse stage is conditioned on them)")
        if prompts is not None and len(prompts) != mulan.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {mulan.shape[0]} rows of mulan_tokens")
        kwargs.setdefault("rerank", prompts is not None)   # without captions there is nothing to re-rank against
        names = list(prompts) if prompts is not None else [f"clip {i}" for i in range(mulan.shape[0])]
        return self._run(lambda t: mulan, duration_s, prompts=names, known=known, melody=melody, bpm=bpm, key=key,
                         **kwargs)

    # -- internals ------------------------------------------------------------------------------------------------
    def _text_tokens(self, prompts) -> np.ndarray:
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty captions, e.g. ['a calm piano waltz']")
        return np.asarray(self.mulan.tokens_from_text(list(prompts)), np.int32)

    def _frames(self, seconds: float) -> tuple[int, int]:
        return math.ceil(seconds * self.semantic_rate - 1e-9), math.ceil(seconds * self.acoustic_rate - 1e-9)

    def _run(self, mulan_at: Callable[[float], np.ndarray], duration_s: float, *, prompts,
             temperatures=None, top_k: int | None = None, top_p: float | None = None,
             guidance_scale: float | None = None, coarse_guidance_scale: float | None = None,
             guide_tempo=None, guide_key=None, guide_melody: bool | None = None, num_samples: int = 1,
             seed: int | Sequence[int] = 0, progress: bool = True, rerank: bool = True,
             known: dict | None = None, boundaries: tuple = (), max_duration_s: float = MAX_DURATION_S, melody=None,
             bpm=None, key=None) -> Generation:
        duration_s = check_duration(duration_s, max_duration_s)
        if bpm is not None and not self.has_tempo:
            raise ValueError("this model has no tempo conditioning (musiclm.json beat_phases = 0): generate without "
                             "bpm=, or use a tempo-conditioned model")
        bpm = check_bpm(bpm, len(prompts)) if bpm is not None else [None] * len(prompts)
        if key is not None and not self.has_key:
            raise ValueError("this model has no key conditioning (musiclm.json key_stages is empty): generate "
                             "without key=, or use a key-conditioned model")
        key = check_key(key, len(prompts)) if key is not None else [None] * len(prompts)
        if melody is not None and not self.sizes.has_melody:
            raise ValueError("this model is not melody-conditioned (musiclm.json melody_levels = 0): generate "
                             "without a melody")
        d = self.sampling
        temperatures = d["temperatures"] if temperatures is None else temperatures
        top_k = d["top_k"] if top_k is None else top_k
        top_p = d["top_p"] if top_p is None else top_p
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        coarse_scale = d["coarse_guidance_scale"] if coarse_guidance_scale is None else coarse_guidance_scale
        if guidance_scale == 1.0 or coarse_scale is None:   # unguided stays unguided in every stage
            coarse_scale = guidance_scale
        tempo_guided = guided_stages(d["guide_tempo"] if guide_tempo is None else guide_tempo, "guide_tempo")
        key_guided = guided_stages(d["guide_key"] if guide_key is None else guide_key)
        guide_melody = bool(d["guide_melody"] if guide_melody is None else guide_melody)
        if len(temperatures) != 3 or min(temperatures) < 0:
            raise ValueError(f"temperatures must be 3 values >= 0 (semantic, coarse, fine), got {temperatures}")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        batch, ns = len(prompts), num_samples
        rep = lambda x: np.repeat(np.asarray(x), ns, axis=0)
        cond = lambda t: rep(mulan_at(t))
        known = {k: rep(v) for k, v in (known or {}).items()}
        if melody is not None:
            melody = np.asarray(melody, np.int32)
            if melody.ndim != 3 or melody.shape[0] != batch or melody.shape[2] != self.sizes.melody_levels:
                raise ValueError(f"melody tokens must be [{batch}, frames, {self.sizes.melody_levels}], got "
                                 f"{melody.shape}")
            melody = rep(melody)
        melody_rate = self.melody.frame_rate if self.melody is not None else MELODY_RATE

        def with_melody(stage, c, a_s, b_s):
            """`c` + the melody frames of seconds [a_s, b_s) when `stage` reads them (training's crop rule)."""
            if self.layouts[stage].has_melody:
                m0 = math.floor(a_s * melody_rate + 0.5)
                n = max(1, round((b_s - a_s) * melody_rate))
                part = self.layouts[stage].no_melody(batch * ns, n)
                if melody is not None and m0 < melody.shape[1]:
                    got = melody[:, m0:m0 + n]
                    part[:, :got.shape[1]] = got
                c["melody"] = part
            return c

        bpm_rows = rep(np.asarray([np.nan if v is None else v for v in bpm], np.float64))
        key_rows = rep(np.asarray([-1 if v is None else v for v in key], np.int64))

        def with_key(stage, c):
            if self.layouts[stage].has_key:
                c["key"] = key_rows
            return c

        def semantic_cond(a, b, done):
            c = with_key("semantic", {"mulan": cond(done / self.semantic_rate)})
            if self.layouts["semantic"].has_beat:   # the window's first frame sits at a / rate s on the beat grid
                c["tempo"] = st.tempo_of(bpm_rows, a / self.semantic_rate, self.semantic_rate)
            return with_melody("semantic", c, a / self.semantic_rate, b / self.semantic_rate)
        n_sem, n_ac = self._frames(duration_s)
        rng = _seed_keys(seed, batch, ns)
        sem_per_ac = self.semantic_rate / self.acoustic_rate
        timings, out = {}, {}
        opts = dict(top_k=top_k, top_p=top_p, progress=progress, boundaries=boundaries)
        scales = {"semantic": guidance_scale, "coarse": coarse_scale}
        stage_scale = lambda stage: 1.0 if stage in self.unguided_stages else scales[stage]  # noqa: E731

        t0 = time.perf_counter()
        out["semantic"] = self._decode_stage(
            "semantic", n_sem, self.semantic_rate, self.windows.semantic_s,
            semantic_cond, known.get("semantic"),
            decoding.fold_in(rng, 0), temperatures[0], stage_scale("semantic"),
            guide_tempo="semantic" in tempo_guided,
            guide_key="semantic" in key_guided, guide_melody=guide_melody, **opts)
        timings["semantic"] = time.perf_counter() - t0

        def coarse_cond(a, b, done):
            s0, s1 = round(a * sem_per_ac), min(round(b * sem_per_ac), n_sem)
            c = with_key("coarse", {"mulan": cond(done / self.acoustic_rate), "semantic": out["semantic"][:, s0:s1]})
            if self.layouts["coarse"].has_beat:   # the same beat grid as the semantic stage's, at this window
                c["tempo"] = st.tempo_of(bpm_rows, a / self.acoustic_rate, self.semantic_rate)
            return with_melody("coarse", c, a / self.acoustic_rate, b / self.acoustic_rate)
        t0 = time.perf_counter()
        out["coarse"] = self._decode_stage("coarse", n_ac, self.acoustic_rate, self.windows.coarse_s, coarse_cond,
                                           known.get("coarse"), decoding.fold_in(rng, 1), temperatures[1],
                                           stage_scale("coarse"), guide_tempo="coarse" in tempo_guided,
                                           guide_key="coarse" in key_guided,
                                           guide_melody=guide_melody, **opts)
        timings["coarse"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out["fine"] = self._decode_stage("fine", n_ac, self.acoustic_rate, self.windows.fine_s,
                                         lambda a, b, done: {"coarse": out["coarse"][:, a:b]}, known.get("fine"),
                                         decoding.fold_in(rng, 2), temperatures[2], 1.0, **opts)
        timings["fine"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        codes = np.concatenate([out["coarse"], out["fine"]], axis=-1)
        waves = self.codec.decode(codes, num_samples=round(duration_s * self.sample_rate))
        timings["codec"] = time.perf_counter() - t0
        scores = np.full((batch * ns,), np.nan, np.float32)
        if ns > 1 and rerank:
            t0 = time.perf_counter()
            scores = self.mulan_scores([p for p in prompts for _ in range(ns)], waves)
            timings["rerank"] = time.perf_counter() - t0
        scores = scores.reshape(batch, ns)
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")
        pick = lambda x: np.take_along_axis(x.reshape(batch, ns, *x.shape[1:]),
                                            order.reshape(batch, ns, *([1] * (x.ndim - 1))), axis=1)
        all_waves = pick(waves)
        return Generation(waves=all_waves[:, 0], all_waves=all_waves, scores=np.take_along_axis(scores, order, 1),
                          tokens={k: pick(v) for k, v in out.items()}, timings=timings, sample_rate=self.sample_rate,
                          bpm=bpm if self.has_tempo else None, key=key if self.has_key else None)

    def mulan_scores(self, prompts: Sequence[str], waves: np.ndarray) -> np.ndarray:
        """Cosine between MuLan's text embedding of each prompt and audio embedding of its wave -> [n]."""
        text = self.mulan.embed_text(list(prompts))
        audio = np.stack([self.mulan.embed_audio(w, self.sample_rate) for w in waves])
        return np.sum(text * audio, axis=-1).astype(np.float32)

    def _decode_stage(self, stage: str, total: int, rate: float, crop_s: float, cond_for, known, rng, temperature,
                      guidance_scale, *, top_k, top_p, progress, boundaries, guide_tempo=False,
                      guide_key=False, guide_melody=False) -> np.ndarray:
        """Decodes `total` frames of one stage in sliding windows; `cond_for(start, end, done)` gives the raw
        conditioning of window [start, end) whose frames from `done` on are new. Returns raw codes."""
        layout, model = self.layouts[stage], self.models[stage]
        k = layout.tokens_per_frame
        crop = max(1, int(crop_s * rate))
        prefix = min(int(crop * self.windows.prefix_fraction), crop - 1)
        cuts = sorted({min(total, math.ceil(b * rate - 1e-9)) for b in boundaries} | {total})
        ids = np.zeros((0, 0), np.int32)
        if known is not None and np.size(known):
            ids = np.asarray(layout.build_targets(**({"semantic": known} if stage == "semantic"
                                                     else {"acoustic": known})))
        done = ids.shape[1] // k if ids.size else 0
        bar = _progress(stage, total, progress)
        bar.update(min(done, total))
        window = 0
        while done < total:
            start = max(0, done - prefix)
            end = min(start + crop, next(c for c in cuts if c > done))
            inputs = np.asarray(layout.build_inputs(**cond_for(start, end, done)))
            prompt = np.concatenate([inputs, ids[:, start * k:done * k]], axis=1) if ids.size else inputs
            guided = guidance_scale != 1.0 and layout.cond_span() != (0, 0)
            drops = dict(drop_tempo=guide_tempo, drop_key=guide_key, drop_melody=guide_melody)
            uncond = np.asarray(layout.uncond_inputs(prompt, **drops)) if guided else None
            need = prompt.shape[1] + (end - done) * k
            if need > model.cfg.max_len:
                raise ValueError(f"the {stage} window needs {need} tokens but the LM's max_len is "
                                 f"{model.cfg.max_len}: shorten Windows.{stage}_s or raise max_len")
            aligned = (jnp.asarray(layout.aligned_ids(inputs, (end - start) * k)) if model.cfg.aligned_inputs
                       else None)
            uncond_aligned = None   # the unconditional rows read the aligned ids of what their prompt keeps
            if guided and (guide_tempo and layout.has_beat or guide_melody and layout.melody_aligned):
                uncond_aligned = jnp.asarray(layout.aligned_ids(layout.uncond_inputs(inputs, **drops),
                                                                (end - start) * k))
            new, _ = decoding.sample(model, jnp.asarray(prompt), max_new_tokens=(end - done) * k, aligned=aligned,
                                     uncond_aligned=uncond_aligned,
                                     rng=decoding.fold_in(rng, window), temperature=temperature, top_k=top_k,
                                     top_p=top_p, logit_mask_fn=layout.logit_mask(), guidance_scale=guidance_scale,
                                     uncond_prompts=None if uncond is None else jnp.asarray(uncond),
                                     prefix_len=inputs.shape[1])
            new = np.asarray(new)
            ids = np.concatenate([ids, new], axis=1) if ids.size else new
            bar.update(end - done)
            done, window = end, window + 1
        bar.close()
        return layout.targets_to_codes(ids[:, :total * k])


def _seed_keys(seed, batch: int, num_samples: int) -> jax.Array:
    """One key for an int seed; for one seed per prompt, one key per row (prompt i's samples are its rows)."""
    if np.ndim(seed) == 0:
        return jax.random.key(seed)
    seeds = list(seed)
    if len(seeds) != batch:
        raise ValueError(f"seed must be an int or one int per prompt ({batch}), got {len(seeds)} seeds")
    return decoding.sample_keys(jnp.stack([jax.random.key(s) for s in seeds]), num_samples)


def _progress(stage: str, total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=f"{stage} stage", unit="frame", disable=not enabled, leave=False)


# -- stage LM checkpoints -----------------------------------------------------------------------------------------
def load_stage_lm(model_dir: str) -> tr.Transformer:
    """The Transformer of a stage-LM checkpoint (`python -m musiclm_jax.train` with gin/experiments/stage_*, or a
    finetuning), rebuilt from the model config its checkpoint records (`TokenLM.model_config`)."""
    from musiclm_jax.lm.models import TokenLM
    from musiclm_jax.train import configs
    from musiclm_jax.train.checkpoints import Checkpointer
    from musiclm_jax.train.loader import load_for_inference

    if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
        raise ValueError(f"{model_dir} holds no checkpoints/: is it the model_dir of a stage-LM training?")
    ckpt = Checkpointer(model_dir, async_save=False)
    try:
        record = ckpt.read_meta().get("model_config") or {}
    finally:
        ckpt.close()
    if "transformer" not in record:
        raise ValueError(f"the checkpoint in {model_dir} records no stage-LM config (written before checkpoints "
                         "carried one): retrain or re-export it")
    cfg = configs.from_dict(tr.TransformerConfig, record["transformer"])
    aligned = record.get("aligned")
    layout = st.StageLayout(aligned["stage"], configs.from_dict(st.TokenSizes, aligned["sizes"])) if aligned else None
    return load_for_inference(TokenLM(cfg, aligned=layout), model_dir).models["model"]


# -- tiny random parts (tests, `generate --random_init --tiny`) -------------------------------------------------
def guided_stages(value, setting: str = "guide_key") -> frozenset:
    """A sampling setting `guide_key` or `guide_tempo` (True: both guided stages, False: none, or a list of stage
    names) -> the stages whose unconditional branch loses the key / the tempo."""
    if isinstance(value, (bool, np.bool_)):
        return frozenset({"semantic", "coarse"} if value else ())
    stages = [value] if isinstance(value, str) else value
    if not isinstance(stages, (list, tuple)) or not set(stages) <= {"semantic", "coarse"}:
        raise ValueError(f"{setting} must be true, false or a list of 'semantic' / 'coarse', got {value!r}")
    return frozenset(stages)


def tiny_random(seed: int = 0, sizes: st.TokenSizes | None = None, melody: bool | str = False) -> MusicLM:
    """A MusicLM of tiny, randomly initialised parts: fast on CPU, and its audio is untrained noise. `melody`: with
    a tiny random melody embedder and a melody-conditioned semantic stage (sizes default to TINY_MELODY); "pitch":
    the pitch-class melody stream (sizes default to TINY_PITCH)."""
    from flax import nnx

    from musiclm_jax.codec.api import SoundStream
    from musiclm_jax.codec.model import CodecConfig
    from musiclm_jax.mulan.api import MuLan
    from musiclm_jax.mulan.audio import AudioConfig
    from musiclm_jax.mulan.model import MuLanConfig, MuLanModel
    from musiclm_jax.mulan.text import TextConfig

    sizes = sizes or (st.TINY_PITCH if melody == "pitch" else st.TINY_MELODY if melody else st.TINY)
    melody_model = None
    if melody == "pitch":
        from musiclm_jax.melody.pitch import PitchMelody
        melody_model = PitchMelody()
    elif melody:
        from musiclm_jax.melody.api import Melody
        melody_model = Melody.random(seed)
    audio = AudioConfig(sample_rate=8000, window_seconds=1.0, stride_seconds=0.5, n_fft=256, hop_length=128,
                        n_mels=16, stage_sizes=(1, 1), width=8, block="basic", groups=4)
    text = TextConfig(vocab_size=30522, hidden=16, layers=1, heads=2, mlp=32, max_length=32, pretrained=None)
    mcfg = MuLanConfig(audio=audio, text=text, embed_dim=16, rvq_levels=sizes.mulan_levels,
                       rvq_codebook_size=sizes.mulan_codes, rvq_kmeans_iters=3)
    mulan = MuLan(MuLanModel(mcfg, nnx.Rngs(seed)), batch_size=8)
    emb = np.random.default_rng(seed).normal(size=(max(64, 4 * sizes.mulan_codes), 16)).astype(np.float32)
    mulan.fit_quantizer(emb / np.linalg.norm(emb, axis=-1, keepdims=True), seed=seed)
    codec = SoundStream.random(CodecConfig(sample_rate=8000, channels=4, strides=(2, 4, 5), embed_dim=8,
                                           num_levels=sizes.codec_levels, codebook_size=sizes.codec_codes), seed)
    lms = {}
    for i, (name, layout) in enumerate(st.layouts(sizes).items()):
        cfg = tr.preset("tiny", vocab_size=layout.vocab_size, max_len=256, dtype="float32",
                        aligned_inputs=layout.needs_aligned)   # beat phases / melody pitch classes
        lms[name] = tr.Transformer(cfg, rngs=nnx.Rngs(seed + 1 + i))
    # codec frames at 8000 / 40 = 200 Hz; semantic at half the acoustic rate, as in the paper (25 vs 50 Hz)
    return MusicLM(mulan=mulan, codec=codec, semantic_lm=lms["semantic"], coarse_lm=lms["coarse"],
                   fine_lm=lms["fine"], sizes=sizes, semantic_rate=codec.frame_rate / 2,
                   windows=Windows(semantic_s=0.2, coarse_s=0.1, fine_s=0.05), melody=melody_model)
