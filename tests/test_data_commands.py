"""`musiclm-jax data build` through the real CLI entry point: builds, reports skips, one-line errors."""
import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import cli


def _folder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    t = np.arange(16000) / 16000
    sf.write(d / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    sf.write(d / "quiet.wav", np.zeros(16000), 16000)
    (d / "c.jsonl").write_text('{"audio": "a.wav", "caption": "a low hum"}\n{"audio": "quiet.wav", "caption": "x"}\n'
                               '{"audio": "gone.wav", "caption": "y"}\n')
    return d


def test_cli_builds_audio_captions_and_reports_skips(tmp_path, capsys):
    d = _folder(tmp_path)
    rc = cli.main(["data", "build", "--dataset", "audio_captions", "--config", "16khz",
                   "--data_dir", str(tmp_path / "tfds"), "--manual_dir", str(d)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "splits {'train': 1}" in out and "'missing_audio': 1" in out and "'silent': 1" in out
    assert (tmp_path / "tfds" / "audio_captions" / "16khz" / "1.0.0").is_dir()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "synthcaps", "--config", "huge"], "unknown synthcaps config 'huge'"),
    (["--dataset", "audio_captions", "--config", "8khz", "--manual_dir", "."], "unknown audio_captions config '8khz'"),
    (["--dataset", "audio_captions", "--manual_dir", "/nonexistent/folder"], "does not exist; pass --manual_dir"),
    (["--dataset", "audio_captions"], "pass --manual_dir"),
    (["--dataset", "synthcaps", "--num_workers", "0"], "--num_workers must be >= 1"),
])
def test_cli_bad_arguments_one_line(tmp_path, capsys, argv, message):
    rc = cli.main(["data", "build", "--data_dir", str(tmp_path)] + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err and err.startswith("musiclm-jax: error:")
