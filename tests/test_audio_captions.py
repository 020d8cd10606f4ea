"""audio_captions builder on fixture folders made here: good items kept, every kind of bad item skipped and named."""
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

tfds = pytest.importorskip("tensorflow_datasets")
from musiclm_jax.data.audio_captions import builder as ac_builder  # noqa: E402  (registers the builder)
from musiclm_jax.data.audio_captions import index  # noqa: E402


def _tone(seconds, sr, freq=440.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    w = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([w] * channels, axis=1) if channels > 1 else w


def _write_bad_files(folder):
    """corrupt, empty, truncated and silent files; returns their ids."""
    with open(os.path.join(folder, "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x10\x00\x00\x00WAVEnot really audio at all" * 3)
    open(os.path.join(folder, "empty.flac"), "wb").close()
    sf.write(os.path.join(folder, "truncated.wav"), _tone(2.0, 16000), 16000, subtype="PCM_16")
    path = os.path.join(folder, "truncated.wav")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    sf.write(os.path.join(folder, "silent.wav"), np.zeros(16000, np.float32), 16000)
    return ["corrupt", "empty", "truncated", "silent"]


def _build(folder, config="16khz", **kw):
    data_dir = os.path.join(os.path.dirname(folder), "_tfds_" + os.path.basename(folder))
    b = ac_builder.AudioCaptions(config=config, data_dir=data_dir, folder=folder, **kw)
    b.download_and_prepare()
    return b


@pytest.fixture
def musiccaps_folder(tmp_path):
    d = tmp_path / "mc"
    d.mkdir()
    sf.write(d / "good1.wav", _tone(12.0, 22050, channels=2), 22050)     # a full-length download: cropped
    sf.write(d / "good2_0-3.flac", _tone(3.0, 16000, 330.0), 16000)       # downloader-style name, already the clip
    sf.write(d / "emptycap.ogg", _tone(1.0, 16000), 16000, format="OGG", subtype="VORBIS")
    bad = _write_bad_files(str(d))
    rows = [("good1", 2, 7, "a calm piano piece", "['piano', 'calm']"), ("good2", 0, 3, "upbeat synth", "synth, upbeat"),
            ("nofile", 0, 10, "its audio is missing", ""), ("emptycap", 0, 1, "   ", "")]
    rows += [(b, 0, 2, f"caption of {b}", "") for b in bad]
    with open(d / "musiccaps-public.csv", "w") as f:
        f.write("ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval\n")
        for i, (y, s, e, c, a) in enumerate(rows):
            f.write(f'{y},{s},{e},/m/x,"{a}","{c}",{i},False,{"True" if y == "good2" else "False"}\n')
    return str(d)


def test_musiccaps_csv_skips_each_bad_item_and_reports(musiccaps_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="musiclm_jax.data.audio_captions"):
        b = _build(musiccaps_folder)
    assert b.report["kept"] == 2
    assert b.report["skipped"] == {"corrupt_audio": 2, "empty_caption": 1, "missing_audio": 1, "silent": 1,
                                   "truncated_audio": 1}
    skip_lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skip_lines) == 6
    for name in ("nofile", "emptycap", "corrupt.wav", "empty.flac", "truncated.wav", "silent.wav"):
        assert sum(name in line for line in skip_lines) == 1, name
    assert b.info.metadata["skipped_total"] == 6
    train = {ex["id"].decode(): ex for ex in tfds.as_numpy(b.as_dataset(split="train"))}
    test = {ex["id"].decode(): ex for ex in tfds.as_numpy(b.as_dataset(split="test"))}
    assert set(train) == {"good1"} and set(test) == {"good2"}   # is_audioset_eval -> test
    g1 = train["good1"]
    assert g1["audio"].dtype == np.int16 and g1["audio"].shape == (5 * 16000,)  # cropped 2..7 s, resampled
    assert g1["caption"] == b"a calm piano piece" and list(g1["aspects"]) == [b"piano", b"calm"]
    assert test["good2"]["audio"].shape == (3 * 16000,) and list(test["good2"]["aspects"]) == [b"synth", b"upbeat"]
    assert b.info.features["audio"].sample_rate == 16000


def test_jsonl_with_optional_captions_at_24khz(tmp_path, caplog):
    d = tmp_path / "js"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "sub" / "a.wav", _tone(1.0, 16000), 16000)
    sf.write(d / "b.flac", _tone(0.5, 48000, 880.0), 48000)
    bad = _write_bad_files(str(d))
    lines = [{"audio": "sub/a.wav", "caption": "solo flute"}, {"audio": "b.flac"}]
    lines += [{"audio": f"{x}.{'flac' if x == 'empty' else 'wav'}", "caption": "x"} for x in bad]
    with open(d / "captions.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    with caplog.at_level(logging.WARNING, logger="musiclm_jax.data.audio_captions"):
        b = _build(str(d), config="24khz")
    assert b.report["kept"] == 2 and b.report["skipped_total"] == 5
    assert b.report["skipped"]["bad_row"] == 1
    exs = {ex["id"].decode(): ex for ex in tfds.as_numpy(b.as_dataset(split="train"))}
    assert exs["sub/a"]["caption"] == b"solo flute" and exs["sub/a"]["has_caption"]
    assert exs["b"]["caption"] == b"" and not exs["b"]["has_caption"]
    assert exs["b"]["audio"].shape == (12000,)  # 0.5 s at 24 kHz
    assert sum("captions.jsonl:" in r.getMessage() for r in caplog.records) == 1


def test_unlabelled_folder(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    sf.write(d / "x.wav", _tone(1.0, 16000), 16000)
    sf.write(d / "y.ogg", _tone(1.0, 16000), 16000, format="OGG", subtype="VORBIS")
    b = _build(str(d))
    exs = list(tfds.as_numpy(b.as_dataset(split="train")))
    assert len(exs) == 2 and not any(e["has_caption"] for e in exs)


def test_wrong_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass --manual_dir") as e:
        _build(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="16khz"):
        ac_builder.AudioCaptions(config="48khz", data_dir=str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "c.csv").write_text("name,caption\nx,y\n")
    with pytest.raises(ValueError, match="missing CSV column"):
        index.index_folder(str(tmp_path / "bad"))


def test_truncated_wav_detected_without_tfds(tmp_path):
    p = str(tmp_path / "t.wav")
    sf.write(p, _tone(1.0, 8000), 8000, subtype="PCM_16")
    index.load_item(index.Item(id="t", audio_path=p, caption="a tone"), 8000)  # complete: no error
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(index.BadItem, match="truncated") as err:
        index.load_item(index.Item(id="t", audio_path=p, caption="a tone"), 8000)
    assert err.value.kind == "truncated_audio"


def test_split_with_only_bad_items_is_dropped_and_all_bad_is_an_error(tmp_path):
    d = tmp_path / "allbad_test"
    d.mkdir()
    sf.write(d / "ok.wav", _tone(1.0, 16000), 16000)
    sf.write(d / "hush.wav", np.zeros(16000, np.float32), 16000)
    (d / "c.jsonl").write_text('{"audio": "ok.wav", "caption": "a"}\n'
                               '{"audio": "hush.wav", "caption": "b", "split": "test"}\n')
    b = _build(str(d))
    assert list(b.info.splits) == ["train"] and b.report["skipped"] == {"silent": 1}
    (d / "c.jsonl").write_text('{"audio": "hush.wav", "caption": "b"}\n')
    with pytest.raises(ValueError, match=r"no usable audio items.*'silent': 1"):
        ac_builder.AudioCaptions(folder=str(d), data_dir=str(tmp_path / "other")).download_and_prepare()
