"""The repository's data files, found the same way from a source checkout and from an installed wheel.

A checkout keeps `gin/` and `weights/` beside the `musiclm_jax` package; a wheel carries copies of them inside the
package, in `musiclm_jax/_data/` (setup.py's build step puts them there). Nothing here depends on the working
directory.
"""
from __future__ import annotations

import pathlib

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _data_dir(name: str, marker: str) -> pathlib.Path:
    # The marker tells our folder from a namesake beside an installed package (site-packages/gin is gin-config).
    for base in (PACKAGE_DIR.parent, PACKAGE_DIR / "_data"):
        if (base / name / marker).exists():
            return base / name
    return PACKAGE_DIR.parent / name  # absent: callers say so when they need it


GIN_DIR = _data_dir("gin", "experiments")
WEIGHTS_DIR = _data_dir("weights", "musiclm/musiclm.json")
SHIPPED_MUSICLM = WEIGHTS_DIR / "musiclm"


def shipped_musiclm_dir() -> pathlib.Path | None:
    """The shipped, trained MusicLM (`make quickstart` exports it), or None where this install has none."""
    return SHIPPED_MUSICLM if (SHIPPED_MUSICLM / "musiclm.json").exists() else None
