"""The demo renders clips without a tfds build and writes wav + PNG + captions.json."""
import json
import os

from musiclm_jax.audio.io import load_audio, rms_dbfs
from musiclm_jax.data.synthcaps.demo import run_demo


def test_run_demo_writes_clips(tmp_path, capsys):
    res = run_demo(str(tmp_path), num_clips=2, seed=3, clip_seconds=3.0)
    out = capsys.readouterr().out
    assert len(res) == 2 and len({r["soundfont"] for r in res}) == 2
    for r in res:
        assert r["caption"] in out and r["wav"] in out
        wave, sr = load_audio(r["wav"])
        assert sr == 16000 and wave.shape == (48000,) and rms_dbfs(wave) > -40
        assert os.path.getsize(r["png"]) > 5000
    assert [c["clip_id"] for c in json.load(open(tmp_path / "captions.json"))] == [r["clip_id"] for r in res]
