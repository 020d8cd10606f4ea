"""Corpus configs and clip specs: what to render, decided up front from one seed, with the split of every clip.

A *score* is one piece of music (notes + instrument programs); it is rendered once per soundfont, so the same score
exists in several timbres. Splits are assigned per score so the timbres of one score never straddle splits. The test
split holds out whole (genre x lead instrument) combinations and whole corpus tunes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from musiclm_jax.data.synthcaps import instruments as inst
from musiclm_jax.data.synthcaps import sources, theory


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    name: str
    num_scores: int
    sample_rate: int = 16000
    clip_seconds: float = 10.0
    soundfonts: tuple[str, ...] = inst.DEFAULT_SOUNDFONTS
    timbres_per_score: int = 2        # soundfonts each score is rendered with
    groove_fraction: float = 0.75     # the rest are music21 tunes
    heldout_fraction: float = 0.1     # share of (genre, lead) combos and of tunes held out for test
    validation_fraction: float = 0.1
    seed: int = 0
    beam: bool = False                # build with a Beam pipeline (Dataflow/Flink/Spark or the DirectRunner)

    def validate(self) -> None:
        if self.num_scores <= 0:
            raise ValueError(f"num_scores must be positive, got {self.num_scores}")
        if self.sample_rate not in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
            raise ValueError(f"sample_rate {self.sample_rate} unsupported; use 16000 or 24000 (or 22050/32000/44100/48000)")
        if not 1.0 <= self.clip_seconds <= 120.0:
            raise ValueError(f"clip_seconds must be in [1, 120], got {self.clip_seconds}")
        for sf in self.soundfonts:
            inst.soundfont_path(sf)
        if not 1 <= self.timbres_per_score <= len(self.soundfonts):
            raise ValueError(f"timbres_per_score must be in [1, {len(self.soundfonts)}] (number of soundfonts)")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip, deterministically, anywhere."""
    clip_id: str
    score_id: str
    source: str                 # 'groove' | 'chorale' | 'folk'
    genre: str
    groove: str                 # mma groove name ('' for tunes)
    tune_id: str                # music21 corpus id ('' for grooves)
    bpm: int
    tonic: str
    mode: str                   # grooves: fixed here; tunes: the tune's own mode (filled in at render time)
    progression: int
    bars: int
    with_lead: bool             # grooves: generated melody; tunes: always True (the tune is the lead)
    with_accompaniment: bool    # tunes only
    programs: tuple[tuple[str, int], ...]  # (role, GM program) for the roles that play
    soundfont: str
    dynamics: str
    seed: int
    split: str
    heldout: bool               # True when the clip's combo or tune is held out (always in test)

    @property
    def lead_instrument(self) -> str:
        """Caption name of the instrument carrying the top line (the lead, else the harmony)."""
        progs = dict(self.programs)
        return inst.LEAD[progs["lead"]] if "lead" in progs else inst.HARMONY[progs["harmony"]]


def _unit_hash(*parts) -> float:
    """Deterministic (not PYTHONHASHSEED-salted) hash of the parts into [0, 1)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def combo_heldout(seed: int, genre: str, lead: str, fraction: float) -> bool:
    return _unit_hash(seed, "combo", genre, lead) < fraction


def tune_heldout(seed: int, tune_id: str, fraction: float) -> bool:
    return _unit_hash(seed, "tune", tune_id) < fraction


def _draw_programs(rng, roles, soundfonts) -> tuple[tuple[str, int], ...]:
    out = []
    for role in roles:
        if role == "drums":
            kits = set.intersection(*(set(inst.drum_kits(sf)) for sf in soundfonts))
            out.append((role, int(rng.choice(sorted(kits)))))
        else:
            out.append((role, int(rng.choice(sorted(inst.table(role))))))
    return tuple(out)


def make_specs(cfg: CorpusConfig) -> list[ClipSpec]:
    """All clip specs of a config, in a fixed order, with their splits."""
    cfg.validate()
    specs = []
    for i in range(cfg.num_scores):
        rng = np.random.default_rng([cfg.seed, i])
        score_id = f"s{cfg.seed}_{i:06d}"
        soundfonts = [str(s) for s in rng.choice(cfg.soundfonts, size=cfg.timbres_per_score, replace=False)]
        dynamics = str(rng.choice(["soft", "medium", "loud"]))
        mode = "major" if rng.random() < 0.6 else "minor"
        tonic = theory.tonic_name(int(rng.integers(12)), mode)
        if rng.random() < cfg.groove_fraction:
            g = sources.GROOVES[int(rng.integers(len(sources.GROOVES)))]
            bpm = int(rng.integers(g.bpm[0], g.bpm[1] + 1))
            with_lead = bool(rng.random() < 0.7)
            roles = (["lead"] if with_lead else []) + ["harmony", "bass", "drums"]
            bars = math.ceil(cfg.clip_seconds / (g.beats * 60.0 / bpm)) + 1
            fields = dict(source="groove", genre=g.genre, groove=g.mma_name, tune_id="", bpm=bpm,
                          progression=int(rng.integers(len(theory.PROGRESSIONS[mode]))), bars=bars,
                          with_lead=with_lead, with_accompaniment=False)
        else:
            kind = "chorale" if rng.random() < 0.4 else "folk"
            ids = sources.tune_ids(kind)
            bpm = int(rng.integers(60, 91) if kind == "chorale" else rng.integers(80, 131))
            acc = bool(kind == "chorale" and rng.random() < 0.7 or kind == "folk" and rng.random() < 0.5)
            roles = ["lead"] + (["harmony", "bass"] if acc else [])
            fields = dict(source=kind, genre="chorale" if kind == "chorale" else "folk song", groove="",
                          tune_id=ids[int(rng.integers(len(ids)))], bpm=bpm, progression=0, bars=0,
                          with_lead=True, with_accompaniment=acc)
        programs = _draw_programs(rng, roles, soundfonts)
        seed = int(rng.integers(2**31))
        spec0 = ClipSpec(clip_id="", score_id=score_id, tonic=tonic, mode=mode, programs=programs, soundfont="",
                         dynamics=dynamics, seed=seed, split="", heldout=False, **fields)
        heldout = combo_heldout(cfg.seed, spec0.genre, spec0.lead_instrument, cfg.heldout_fraction) or (
            bool(spec0.tune_id) and tune_heldout(cfg.seed, spec0.tune_id, cfg.heldout_fraction))
        if heldout:
            split = "test"
        else:
            split = "validation" if _unit_hash(cfg.seed, "split", score_id) < cfg.validation_fraction else "train"
        for sf in soundfonts:
            specs.append(dataclasses.replace(spec0, clip_id=f"{score_id}_{sf}", soundfont=sf, split=split,
                                             heldout=heldout))
    return specs


def heldout_summary(cfg: CorpusConfig, specs: list[ClipSpec]) -> dict:
    """What the test split holds out: the (genre, lead instrument) combos and the tunes (for dataset metadata)."""
    combos = {(s.genre, s.lead_instrument) for s in specs}
    return {
        "heldout_combos": sorted(f"{g} x {l}" for g, l in combos if combo_heldout(cfg.seed, g, l, cfg.heldout_fraction)),
        "heldout_tunes": sorted({s.tune_id for s in specs
                                 if s.tune_id and tune_heldout(cfg.seed, s.tune_id, cfg.heldout_fraction)}),
        "split_counts": {sp: sum(s.split == sp for s in specs) for sp in ("train", "validation", "test")},
    }
