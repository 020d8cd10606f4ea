"""musiclm-jax: a JAX/Flax reimplementation of MusicLM. Dependencies are pinned in requirements.lock (see Makefile)."""
from setuptools import find_packages, setup

setup(
    name="musiclm-jax",
    version="0.1.0",
    description="MusicLM (text-to-music) in JAX/Flax NNX with a T5X-style training stack",
    packages=find_packages(include=["musiclm_jax", "musiclm_jax.*", "tasks", "tasks.*"]),
    package_data={"": ["*.gin"]},
    python_requires=">=3.12",
    entry_points={"console_scripts": ["musiclm-jax=musiclm_jax.cli:main"]},
)
