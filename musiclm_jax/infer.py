"""Gin-configured inference, T5X's `infer.py`: `python -m musiclm_jax.infer --gin_file=gin/experiments/... [--gin.K=V]`.

Samples token sequences from a trained token LM into JSONL (`musiclm_jax.train.inference.infer`); starts like
a training (`train/launch.py`, the same flags). Text-to-music from prompts is `musiclm-jax infer`
(`cli/infer.py`, library code in `batch_decode.py`).
"""
from __future__ import annotations

import sys

from musiclm_jax.train import launch as launcher


def _infer(argv: list[str]) -> tuple[dict, str]:
    from musiclm_jax.train import gin_utils

    files, bindings, search_paths = gin_utils.parse_flags(argv, "Sample from a trained token LM.")
    summary = launcher.launch("musiclm_jax.train.inference:infer", files, bindings, search_paths)
    return summary, (f"wrote {summary['num_samples']} samples (checkpoint step {summary['step']}) to "
                     f"{summary['output_path']}")


def main(argv: list[str] | None = None) -> int:
    return launcher.main(_infer, argv)


if __name__ == "__main__":
    sys.exit(main())
