"""The `synthcaps` tensorflow-datasets builder: rendered, captioned music whose every caption word is true.

    import musiclm_jax.data.synthcaps.builder  # registers 'synthcaps'
    b = tfds.builder("synthcaps/tiny", data_dir=DIR); b.download_and_prepare(); ds = b.as_dataset(split="train")

Configs: `tiny` (32 clips, seconds to build; tests), `small` (3000 clips; the demo training set), `large`
(24 kHz / 30 s, 100k clips: build it with a Beam runner). `make_config` derives other rates and lengths.
Audio is stored as int16 PCM (divide by 32768 for float); the test split holds out whole (genre x lead instrument)
combinations and whole tunes, listed in `info.metadata`.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import re

import numpy as np
import tensorflow_datasets as tfds

from musiclm_jax.data.synthcaps import render, specs as specs_lib
from musiclm_jax.data.synthcaps.specs import CorpusConfig

log = logging.getLogger("musiclm_jax.data.synthcaps")

CORPUS_CONFIGS = {
    "tiny": CorpusConfig("tiny", num_scores=16, heldout_fraction=0.2, validation_fraction=0.15),
    "small": CorpusConfig("small", num_scores=1500),
    "large": CorpusConfig("large", num_scores=50000, sample_rate=24000, clip_seconds=30.0,
                          soundfonts=("fluidr3", "timgm6mb", "musescore"), timbres_per_score=2, beam=True),
    # the paper's audio setup at demo scale
    "small_24khz_30s": CorpusConfig("small_24khz_30s", num_scores=1500, sample_rate=24000, clip_seconds=30.0),
}


class SynthcapsConfig(tfds.core.BuilderConfig):
    def __init__(self, corpus: CorpusConfig):
        super().__init__(name=corpus.name, description=(
            f"{corpus.num_scores} scores x {corpus.timbres_per_score} soundfonts, {corpus.sample_rate} Hz, "
            f"{corpus.clip_seconds:g} s clips{', Beam' if corpus.beam else ''}"))
        self.corpus = corpus


NAMED_CONFIGS = {name: SynthcapsConfig(c) for name, c in CORPUS_CONFIGS.items()}


def make_config(base: str = "tiny", *, sample_rate: int | None = None, clip_seconds: float | None = None,
                num_scores: int | None = None, seed: int | None = None) -> SynthcapsConfig:
    """A config derived from a named one; its name records what changed (e.g. 'tiny_24000hz_30s')."""
    if base not in CORPUS_CONFIGS:
        raise ValueError(f"unknown synthcaps config {base!r}; choose one of {sorted(CORPUS_CONFIGS)}")
    c = CORPUS_CONFIGS[base]
    changes, name = {}, base
    if sample_rate is not None and sample_rate != c.sample_rate:
        changes["sample_rate"], name = int(sample_rate), f"{name}_{int(sample_rate)}hz"
    if clip_seconds is not None and clip_seconds != c.clip_seconds:
        changes["clip_seconds"], name = float(clip_seconds), f"{name}_{float(clip_seconds):g}s"
    if num_scores is not None and num_scores != c.num_scores:
        changes["num_scores"], name = int(num_scores), f"{name}_n{int(num_scores)}"
    if seed is not None and seed != c.seed:
        changes["seed"], name = int(seed), f"{name}_seed{int(seed)}"
    if not changes:  # tfds refuses a second config object under a registered name
        return NAMED_CONFIGS[base]
    corpus = dataclasses.replace(c, name=name.replace(".", "p"), **changes)
    corpus.validate()
    return SynthcapsConfig(corpus)


def config_from_name(name: str) -> SynthcapsConfig:
    """Inverse of `make_config`'s naming: 'tiny_24000hz_30s' -> that config (so tfds.builder('synthcaps/NAME') works)."""
    bases = "|".join(sorted(map(re.escape, CORPUS_CONFIGS), key=len, reverse=True))
    m = re.fullmatch(rf"({bases})(?:_(\d+)hz)?(?:_(\d+(?:p\d+)?)s)?(?:_n(\d+))?(?:_seed(\d+))?", name)
    if not m:
        raise ValueError(f"unknown synthcaps config {name!r}; choose one of {sorted(CORPUS_CONFIGS)} "
                         "(or make_config() names such as tiny_24000hz_30s)")
    base, sr, secs, n, seed = m.groups()
    cfg = make_config(base, sample_rate=sr and int(sr), clip_seconds=secs and float(secs.replace("p", ".")),
                      num_scores=n and int(n), seed=seed and int(seed))
    if cfg.name != name:
        raise ValueError(f"synthcaps config name {name!r} is not canonical; use {cfg.name!r}")
    return cfg


class Synthcaps(tfds.core.GeneratorBasedBuilder):
    """SynthCaps: mma grooves and music21 tunes rendered with FluidSynth, with captions built from the truth."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(NAMED_CONFIGS.values())
    DEFAULT_CONFIG_NAME = "tiny"

    def __init__(self, *, num_workers: int = 1, use_beam: bool | None = None, **kwargs):
        """num_workers: render processes when not on Beam. use_beam: None = the config's choice, or Beam
        whenever the DownloadConfig names a beam runner or options."""
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if isinstance(kwargs.get("config"), str) and kwargs["config"] not in CORPUS_CONFIGS:
            kwargs["config"] = config_from_name(kwargs["config"])
        self._num_workers = num_workers
        self._use_beam = use_beam
        self._beam_requested = False
        self.skipped: list[tuple[str, str]] = []
        super().__init__(**kwargs)

    @property
    def corpus(self) -> CorpusConfig:
        return self.builder_config.corpus

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.corpus
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "clip_id": text, "score_id": text,
                "audio": tfds.features.Audio(shape=(int(round(c.sample_rate * c.clip_seconds)),), dtype=np.int16,
                                             sample_rate=c.sample_rate),
                "caption": text, "genre": text,
                "bpm": tfds.features.Scalar(dtype=np.float32),
                "key": text, "mode": text, "mood": text, "dynamics": text,
                "instruments": tfds.features.Sequence(text),
                "lead_instrument": text, "soundfont": text, "source": text, "groove": text, "tune_id": text,
                "heldout": tfds.features.Scalar(dtype=np.bool_),
                "midi": tfds.features.Scalar(dtype=np.object_, doc="Standard MIDI file bytes of the score"),
                "lead_notes": tfds.features.Sequence({
                    "pitch": tfds.features.Scalar(dtype=np.int32),
                    "start": tfds.features.Scalar(dtype=np.float32),
                    "end": tfds.features.Scalar(dtype=np.float32),
                }),
            }),
            supervised_keys=("audio", "caption"),
            metadata=tfds.core.MetadataDict(),
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        if download_config is not None:
            self._beam_requested = bool(download_config.beam_runner or download_config.beam_options)
        return super()._download_and_prepare(dl_manager, download_config)

    def _beam(self) -> bool:
        if self._use_beam is not None:
            return self._use_beam
        return self.corpus.beam or self._beam_requested

    def _split_generators(self, dl_manager):
        all_specs = specs_lib.make_specs(self.corpus)
        summary = specs_lib.heldout_summary(self.corpus, all_specs)
        self.info.metadata.update(summary | {"seed": self.corpus.seed, "sample_rate": self.corpus.sample_rate,
                                             "clip_seconds": self.corpus.clip_seconds})
        log.info("synthcaps/%s: %s", self.corpus.name, summary["split_counts"])
        # tfds refuses empty splits; a very small corpus may have no validation or test scores
        return {split: self._generate_examples([s for s in all_specs if s.split == split])
                for split in ("train", "validation", "test") if summary["split_counts"][split]}

    def _generate_examples(self, split_specs):
        c = self.corpus
        if self._beam():
            beam = tfds.core.lazy_imports.apache_beam
            return (beam.Create(split_specs)
                    | beam.Map(render.render_example, c.sample_rate, c.clip_seconds)
                    | beam.Filter(_keep_or_log))
        return self._generate_locally(split_specs)

    def _generate_locally(self, split_specs):
        c = self.corpus
        jobs = [(s, c.sample_rate, c.clip_seconds) for s in split_specs]
        if self._num_workers == 1 or len(jobs) < 2:
            yield from self._kept(map(render.render_example_star, jobs))
            return
        # spawn, not fork: the parent holds TensorFlow's threads
        with multiprocessing.get_context("spawn").Pool(self._num_workers) as pool:
            yield from self._kept(pool.imap(render.render_example_star, jobs, chunksize=2))

    def _kept(self, results):
        kept = skipped = 0
        for key, ex in results:
            if isinstance(ex, str):
                skipped += 1
                self.skipped.append((key, ex))
                self.info.metadata["skipped_clips"] = [k for k, _ in self.skipped]
                log.warning("synthcaps: skipped clip %s: %s", key, ex)
                continue
            kept += 1
            yield key, ex
        log.info("synthcaps/%s: rendered %d clip(s), skipped %d", self.corpus.name, kept, skipped)


def _keep_or_log(item) -> bool:
    key, ex = item
    if isinstance(ex, str):
        tfds.core.lazy_imports.apache_beam.metrics.Metrics.counter("synthcaps", "skipped_clips").inc()
        log.warning("synthcaps: skipped clip %s: %s", key, ex)
        return False
    return True
