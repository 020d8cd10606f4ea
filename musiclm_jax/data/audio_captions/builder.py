"""The `audio_captions` tfds builder: your own folder of audio, with MusicCaps CSV or JSONL captions (optional).

    import musiclm_jax.data.audio_captions.builder  # registers 'audio_captions'
    b = tfds.builder("audio_captions/16khz", data_dir=DIR)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MY_FOLDER))

Bad items (missing, corrupt, empty, truncated, silent audio; empty captions; malformed rows) are skipped, each
named in one log line, and counted; the counts are in `info.metadata["skipped"]` and `builder.report`.
"""
from __future__ import annotations

import collections
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from musiclm_jax.data.audio_captions import index

log = logging.getLogger("musiclm_jax.data.audio_captions")


def _check_config_name(cls, config) -> None:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if isinstance(config, str) and config not in names:
        raise ValueError(f"unknown {cls.name} config {config!r}; choose one of {names}")


class AudioCaptionsConfig(tfds.core.BuilderConfig):
    def __init__(self, name: str, sample_rate: int):
        super().__init__(name=name, description=f"mono int16 PCM at {sample_rate} Hz")
        self.sample_rate = sample_rate


class AudioCaptions(tfds.core.GeneratorBasedBuilder):
    """A user's audio folder with optional captions, resampled to mono at the config's rate."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [AudioCaptionsConfig("16khz", 16000), AudioCaptionsConfig("24khz", 24000)]
    DEFAULT_CONFIG_NAME = "16khz"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put your audio (wav/flac/ogg/mp3) in one folder with either a MusicCaps-format CSV "
        "(ytid,start_s,end_s,caption,aspect_list,...; files named by ytid) or a JSONL file of "
        '{"audio": relative/path.wav, "caption": "..."} lines (or no caption file: unlabelled audio). '
        "Pass it as manual_dir (CLI: --manual_dir).")

    def __init__(self, *, folder: str | None = None, captions_file: str | None = None, **kwargs):
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"audio folder {folder!r} does not exist; pass --manual_dir (folder=) pointing at your audio + captions")
        _check_config_name(type(self), kwargs.get("config"))
        self._folder = folder
        self._captions_file = captions_file
        self.report: dict = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "id": text,
                "audio": tfds.features.Audio(shape=(None,), dtype=np.int16,
                                             sample_rate=self.builder_config.sample_rate),
                "caption": text,
                "has_caption": tfds.features.Scalar(dtype=np.bool_),
                "aspects": tfds.features.Sequence(text),
                "path": text,
            }),
            supervised_keys=("audio", "caption"),
            metadata=tfds.core.MetadataDict(),
        )

    def _resolve_folder(self, dl_manager) -> str:
        if self._folder:
            return self._folder
        try:
            return str(dl_manager.manual_dir)
        except AssertionError:
            raise ValueError("audio_captions needs your audio folder: pass --manual_dir DIR (or folder=DIR); "
                             f"looked in {dl_manager._manual_dir}") from None

    def _split_generators(self, dl_manager):
        items, bad_rows = index.index_folder(self._resolve_folder(dl_manager), self._captions_file)
        if not items and not bad_rows:
            raise ValueError("no audio items found; the folder needs wav/flac/ogg/mp3 files (and optionally a .csv/.jsonl)")
        self._counts = collections.Counter()
        self._expected = len(items) + len(bad_rows)
        for where, kind, reason in bad_rows:
            self._skip(kind, f"{where}: {reason}")
        # Check every item before writing (a second decode is cheap next to a failed build): tfds refuses a split
        # that yields nothing, so a split whose items are all bad must not be declared at all.
        good = []
        for it in items:
            try:
                index.load_item(it, self.builder_config.sample_rate)
            except index.BadItem as e:
                self._skip(e.kind, str(e))
                continue
            good.append(it)
        if not good:
            skipped = dict(sorted(self._counts.items()))
            raise ValueError(f"no usable audio items in the folder: all {sum(skipped.values())} skipped {skipped}")
        splits = sorted({it.split for it in good})
        return {sp: self._generate_examples([it for it in good if it.split == sp]) for sp in splits}

    def _skip(self, kind: str, message: str) -> None:
        self._counts[kind] += 1
        log.warning("audio_captions: skipped (%s) %s", kind, message)

    def _generate_examples(self, items):
        sr = self.builder_config.sample_rate
        seen = collections.Counter()
        for it in items:
            try:
                wave = index.load_item(it, sr)
            except index.BadItem as e:
                self._skip(e.kind, str(e))
                continue
            self._counts["kept"] += 1
            seen[it.id] += 1
            key = it.id if seen[it.id] == 1 else f"{it.id}#{seen[it.id]}"
            yield key, {
                "id": it.id,
                "audio": np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16),
                "caption": (it.caption or "").strip(),
                "has_caption": it.caption is not None,
                "aspects": list(it.aspects),
                "path": it.audio_path,
            }
        self._finish()

    def _finish(self) -> None:
        """Called after each split; the last call leaves the full report (logged once per split)."""
        kept = self._counts.get("kept", 0)
        skipped = {k: v for k, v in sorted(self._counts.items()) if k != "kept"}
        self.report = {"kept": kept, "skipped": skipped, "skipped_total": sum(skipped.values())}
        self.info.metadata.update(self.report)
        log.info("audio_captions: kept %d item(s), skipped %d %s", kept, self.report["skipped_total"], skipped)
