"""Train with gin: `python -m musiclm_jax.train --gin_file=gin/experiments/lm_tiny_synthetic.gin --gin.KEY=VALUE`.

T5X's flags, on absl (`gin_utils.parse_flags`): `--gin_file`, `--gin_bindings`, `--gin_search_paths`, absl logging.

On a pod, run the same command on every host: `jax.distributed.initialize()` is called when the environment says
this is one process of many (see `partitioning.maybe_initialize_distributed`). The launch is `train/launch.py`'s,
shared with every `musiclm-jax ... train` command.
"""
from __future__ import annotations

import sys

from musiclm_jax.train import launch as launcher


def _train(argv: list[str]) -> tuple[dict, str]:
    from musiclm_jax.train import gin_utils

    files, bindings, search_paths = gin_utils.parse_flags(argv, "Train a model family with gin configs.")
    summary = launcher.launch("musiclm_jax.train.trainer:train", files, bindings, search_paths)
    last = summary.get("last_metrics", {})
    return summary, (f"done: step {summary['step']}, loss {last.get('loss', float('nan')):.4f}, "
                     f"skipped {summary['skipped_steps']}, preempted {summary['preempted']}")


def main(argv: list[str] | None = None) -> int:
    return launcher.main(_train, argv)


if __name__ == "__main__":
    sys.exit(main())
