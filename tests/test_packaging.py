"""A built wheel works outside the repository: gin configs and shipped weights inside the package, dependencies
declared, no top-level `tasks` package; and the named SynthCaps configs construct (the README's `--config tiny`)."""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_named_synthcaps_configs_construct(tmp_path):
    from musiclm_jax.data.synthcaps import builder as sc

    for name in sc.CORPUS_CONFIGS:  # "Cannot name a custom BuilderConfig the same as an available one" before
        b = sc.Synthcaps(config=sc.make_config(name), data_dir=str(tmp_path))
        assert b.builder_config.name == name
    assert sc.make_config("tiny", num_scores=4).name == "tiny_n4"


def test_wheel_carries_configs_weights_and_dependencies(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("musiclm_jax", "gin", "weights"):  # a copy: building must not write into the checkout
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "_data"))
    for name in ("setup.py", "requirements.in", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("musiclm_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        z.extractall(tmp_path / "site")
    assert "musiclm_jax/_data/gin/experiments/codec_tiny.gin" in names
    assert "musiclm_jax/_data/weights/musiclm/musiclm.json" in names
    assert "musiclm_jax/tasks/registry.py" in names
    assert not any(n.startswith("tasks/") for n in names), "a top-level 'tasks' package would clash with others"
    assert "Requires-Dist: jax==" in metadata and "Requires-Dist: gin-config==" in metadata
    # Installed (a pure-Python wheel unpacked onto the path) and used from an unrelated directory:
    probe = ("import musiclm_jax, musiclm_jax.resources as r\n"
             "from musiclm_jax.train import gin_utils\n"
             "gin_utils.parse_config(['gin/experiments/lm_tiny_synthetic.gin'], [\"MODEL_DIR = '/tmp/x'\"])\n"
             "print(musiclm_jax.__file__); print(r.GIN_DIR); print(r.shipped_musiclm_dir())\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    site = str(tmp_path / "site")
    assert all(line.startswith(site) for line in out), out
    assert out[1].endswith("_data/gin") and out[2].endswith("_data/weights/musiclm")
