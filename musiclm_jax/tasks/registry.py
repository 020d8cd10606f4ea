"""SeqIO task registrations: `<name>_semantic`, `<name>_coarse`, `<name>_fine` per dataset.

    TFDS source -> tokenize -> CacheDatasetPlaceholder -> drop_failed
                -> aligned_crop (per-stage seconds, gin `stage_crop_seconds`) -> to_stage (lm/stages.py)

A read from the cache (`use_cached=True`, what training does) first checks the cache's tokenizer record
(`StageTask`, `preprocessors.check_tokenizers`); `use_cached=False` tokenizes on the fly (slow; small data, tests).

The three tasks of one dataset share their pre-cache part, so `python -m musiclm_jax.tasks.cache` tokenizes once and writes
the same token cache for all three (see tasks/cache.py). Tokenizers come from `tokenizer_spec` (gin) or the
$MUSICLM_*_DIR variables; a stage-LM gin experiment names its task with `train_stage_lm.task = "synthcaps_coarse"`
style bindings of `tasks.data.stage_task_dataset`.
"""
from __future__ import annotations

import seqio

from musiclm_jax.lm.stages import PAPER, STAGES, StageLayout, TokenSizes
from musiclm_jax.tasks import preprocessors as pp

SYNTHCAPS_KEEP = ("caption", "genre", "bpm", "key", "mode", "mood", "lead_instrument", "source")
AUDIO_CAPTIONS_KEEP = ("caption", "has_caption")


class StageTask(seqio.Task):
    """A seqio Task that checks the cache's tokenizer record when (and only when) a read uses the cache."""

    def __init__(self, *args, tokenizer_check: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer_check = tokenizer_check or {}

    def get_dataset(self, *args, use_cached: bool = False, **kwargs):
        if use_cached and self.tokenizer_check:
            pp.check_tokenizers(self.name, **self.tokenizer_check)
        return super().get_dataset(*args, use_cached=use_cached, **kwargs)


def stage_output_features(stage: str, sizes: TokenSizes) -> dict[str, seqio.Feature]:
    vocab = seqio.PassThroughVocabulary(StageLayout(stage, sizes).vocab_size)
    return {"inputs": seqio.Feature(vocab, add_eos=False, dtype="int32"),
            "targets": seqio.Feature(vocab, add_eos=False, dtype="int32")}


def register_stage_tasks(name: str, tfds_name: str, *, sizes: TokenSizes = PAPER, keep: tuple[str, ...] = (),
                         splits=None, tfds_data_dir: str | None = None, semantic_rate: float = 25.0,
                         acoustic_rate: float = 50.0, crop_seconds: dict[str, float] | None = None,
                         audio_key: str = "audio", melody_rate: float = 2.0,
                         speed_semitones: tuple[int, ...] = ()) -> list[str]:
    """Registers `<name>_<stage>` for the three stages (replacing earlier ones of that name); returns the names.

    `crop_seconds` fixes the crops per stage; None reads gin's `stage_crop_seconds` when the dataset is built.
    `sizes.melody_levels > 0`: the semantic task is melody-conditioned (its cache must hold melody tokens of a
    `melody_rate` Hz embedder: the melody embedder's 1 / stride_seconds). `speed_semitones`: each clip is also
    tokenized played faster / slower by these semitones (`preprocessors.speed_variants`; pass a train-only
    `splits`, and evaluate on a task without it)."""
    pp.crop_grid(semantic_rate, acoustic_rate)  # bad rates fail at registration
    names = []
    for stage in STAGES:
        task_name = f"{name}_{stage}"
        if task_name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(task_name)
        source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits)
        seqio.TaskRegistry.add(
            task_name, source=source,
            preprocessors=[
                *([pp.partial(pp.speed_variants, semitones=tuple(speed_semitones), audio_key=audio_key)]
                  if speed_semitones else []),
                pp.partial(pp.tokenize, task_name=task_name, audio_key=audio_key, keep=keep),
                seqio.CacheDatasetPlaceholder(),
                pp.drop_failed,
                pp.partial(pp.aligned_crop, stage=stage, semantic_rate=semantic_rate, acoustic_rate=acoustic_rate,
                           crop_seconds=(crop_seconds or {}).get(stage), melody_rate=melody_rate),
                pp.partial(pp.to_stage, stage=stage, sizes=sizes, semantic_rate=semantic_rate),
            ],
            output_features=stage_output_features(stage, sizes), task_cls=StageTask,
            tokenizer_check=dict(sizes=sizes, semantic_rate=semantic_rate, acoustic_rate=acoustic_rate,
                                 melody_rate=melody_rate))
        names.append(task_name)
    return names


def register_mixture(name: str, tasks_and_rates: dict[str, float]) -> str:
    """A mixture of stage tasks with sampling rates (e.g. synthcaps + your own folder, 1:3): read it with
    `stage_task_dataset(task=name, ...)` like a task. Its tasks must be of one stage (same output features)."""
    if not tasks_and_rates or any(r <= 0 for r in tasks_and_rates.values()):
        raise ValueError(f"mixture {name!r} needs at least one task and positive rates, got {tasks_and_rates}")
    missing = [t for t in tasks_and_rates if t not in seqio.TaskRegistry.names()]
    if missing:
        raise ValueError(f"mixture {name!r} names unregistered tasks {missing}: register them first "
                         "(register_stage_tasks)")
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(tasks_and_rates.items()))
    return name


def register_defaults() -> None:
    """The standard tasks at the paper's token sizes: SynthCaps (`synthcaps/small`, 16 kHz) and the paper-audio
    variant `synthcaps/small_24khz_30s`. Your own folder: call `register_stage_tasks("mine", "audio_captions/...",
    keep=AUDIO_CAPTIONS_KEEP)` (TFDS name with its version, e.g. "audio_captions/NAME:1.0.0") in a module passed with --module_import."""
    import musiclm_jax.data.audio_captions.builder  # noqa: F401 -- registers the TFDS builders
    import musiclm_jax.data.synthcaps.builder  # noqa: F401

    register_stage_tasks("synthcaps", "synthcaps/small:1.0.0", keep=SYNTHCAPS_KEEP)
    register_stage_tasks("synthcaps_24khz_30s", "synthcaps/small_24khz_30s:1.0.0", keep=SYNTHCAPS_KEEP)
