"""Finds the items of a user's audio folder: MusicCaps-format CSV, JSONL, or bare audio files (no captions).

Plain Python, no tfds: `index_folder` lists the items (and the rows it had to drop, with reasons); `load_item`
reads one item's audio, raising `BadItem` with a reason for anything unusable. The builder skips and counts those.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import json
import os

import numpy as np

from musiclm_jax.audio import io as audio_io

AUDIO_EXTENSIONS = audio_io.SUPPORTED_EXTENSIONS
MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s")


class BadItem(ValueError):
    """An item the build skips; `kind` is the counter it goes to (missing_audio, corrupt_audio, silent, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    audio_path: str               # '' when the CSV row's audio was not found
    caption: str | None           # None: unlabelled (no caption given); '' would be an empty caption (bad)
    aspects: tuple[str, ...] = ()
    start_s: float | None = None
    end_s: float | None = None
    split: str = "train"


def _audio_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(out)


def find_captions_file(folder: str) -> str | None:
    """The one .csv or .jsonl at the top of `folder`, None if there is none; ValueError if ambiguous."""
    cands = sorted(f for f in os.listdir(folder) if f.lower().endswith((".csv", ".jsonl")))
    if len(cands) > 1:
        raise ValueError(f"{folder} holds several caption files {cands}; pass captions_file= (--captions_file) to pick one")
    return os.path.join(folder, cands[0]) if cands else None


def _parse_aspects(text: str) -> tuple[str, ...]:
    text = (text or "").strip()
    if not text:
        return ()
    try:
        val = ast.literal_eval(text)  # MusicCaps stores a Python list literal: "['pop', 'tinny wide hi hats']"
        if isinstance(val, (list, tuple)):
            return tuple(str(v).strip() for v in val if str(v).strip())
    except (ValueError, SyntaxError):
        pass
    return tuple(a.strip() for a in text.split(",") if a.strip())


def _index_csv(path: str, folder: str) -> tuple[list[Item], list[tuple[str, str, str]]]:
    by_stem: dict[str, str] = {}
    for f in _audio_files(folder):
        by_stem.setdefault(os.path.splitext(os.path.basename(f))[0], f)
    items, bad = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MUSICCAPS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing CSV column(s) {missing}; MusicCaps format needs ytid,start_s,end_s[,caption,aspect_list]")
        has_caption = "caption" in reader.fieldnames
        for line, row in enumerate(reader, start=2):
            ytid = (row["ytid"] or "").strip()
            try:
                start, end = float(row["start_s"]), float(row["end_s"])
            except (TypeError, ValueError):
                bad.append((f"{os.path.basename(path)}:{line}", "bad_row", f"start_s/end_s not numbers: {row['start_s']!r}, {row['end_s']!r}"))
                continue
            # audio by ytid: 'ID.wav' or a downloader's 'ID_30-40.flac' / 'ID-30.ogg'
            audio = by_stem.get(ytid) or next((p for s, p in by_stem.items() if s.startswith((ytid + "_", ytid + "-"))), "")
            split = "test" if str(row.get("is_audioset_eval", "")).strip().lower() in ("true", "1") else "train"
            items.append(Item(ytid or f"row{line}", audio, row.get("caption") if has_caption else None,
                              _parse_aspects(row.get("aspect_list", "")), start, end, split))
    return items, bad


def _index_jsonl(path: str, folder: str) -> tuple[list[Item], list[tuple[str, str, str]]]:
    items, bad = [], []
    with open(path, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            where = f"{os.path.basename(path)}:{line}"
            try:
                rec = json.loads(text)
                audio = rec["audio"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                bad.append((where, "bad_row", f'not a JSON object with an "audio" field ({type(e).__name__})'))
                continue
            full = audio if os.path.isabs(audio) else os.path.join(folder, audio)
            aspects = rec.get("aspects", ())
            items.append(Item(os.path.splitext(str(audio))[0], full, rec.get("caption"),
                              tuple(aspects) if isinstance(aspects, list) else _parse_aspects(str(aspects)),
                              rec.get("start_s"), rec.get("end_s"), str(rec.get("split", "train"))))
    return items, bad


def index_folder(folder: str, captions_file: str | None = None) -> tuple[list[Item], list[tuple[str, str, str]]]:
    """Items of a folder, and the rows dropped before any audio is read as (where, kind, reason)."""
    if not folder or not os.path.isdir(folder):
        raise ValueError(f"audio folder {folder!r} does not exist; pass --manual_dir (manual_dir=) pointing at your audio + captions")
    if captions_file is not None and not os.path.isabs(captions_file):
        captions_file = os.path.join(folder, captions_file)
    if captions_file is not None and not os.path.isfile(captions_file):
        raise ValueError(f"captions file {captions_file} not found; give a .csv (MusicCaps format) or .jsonl path")
    captions_file = captions_file or find_captions_file(folder)
    if captions_file is None:  # unlabelled: every audio file under the folder
        items = [Item(os.path.splitext(os.path.relpath(p, folder))[0], p, None) for p in _audio_files(folder)]
        return items, []
    if captions_file.lower().endswith(".csv"):
        return _index_csv(captions_file, folder)
    if captions_file.lower().endswith(".jsonl"):
        return _index_jsonl(captions_file, folder)
    raise ValueError(f"captions file {captions_file} must end in .csv or .jsonl")


def load_item(item: Item, sample_rate: int, silence_db: float = -60.0) -> np.ndarray:
    """The item's mono float32 wave at `sample_rate`, cropped to [start_s, end_s] when the file spans it."""
    if item.caption is not None and not str(item.caption).strip():
        raise BadItem("empty_caption", f"{item.id}: empty caption")
    if not item.audio_path:
        raise BadItem("missing_audio", f"{item.id}: no audio file named after it in the folder")
    if not os.path.exists(item.audio_path):
        raise BadItem("missing_audio", f"{item.id}: audio file {item.audio_path} not found")
    try:
        wave, sr = audio_io.load_audio(item.audio_path, sample_rate=sample_rate, mono=True)
    except audio_io.AudioLoadError as e:
        raise BadItem("truncated_audio" if "truncated" in str(e) else "corrupt_audio", str(e)) from None
    if item.start_s is not None and item.end_s is not None and item.end_s > item.start_s:
        # a full-length download spans the window: crop it; a file that is already the clip is used whole
        if wave.shape[0] / sr >= item.end_s - 1e-3:
            wave = wave[int(item.start_s * sr):int(item.end_s * sr)]
    if wave.shape[0] < sr // 10:
        raise BadItem("too_short", f"{item.audio_path}: shorter than 0.1 s ({wave.shape[0]} samples)")
    if audio_io.is_silent(wave, silence_db):
        raise BadItem("silent", f"{item.audio_path}: silent (below {silence_db:g} dBFS)")
    return wave
