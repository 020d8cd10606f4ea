"""Train with gin: `python -m musiclm_jax.train --gin_file=gin/experiments/lm_tiny_synthetic.gin --gin.KEY=VALUE`.

On a pod, run the same command on every host: `jax.distributed.initialize()` is called when the environment says
this is one process of many (see `partitioning.maybe_initialize_distributed`).
"""
from __future__ import annotations

import logging
import sys

PREEMPTED_EXIT = 143  # 128 + SIGTERM


def main(argv: list[str] | None = None) -> int:
    from musiclm_jax.train import gin_utils, partitioning

    try:
        files, bindings, args = gin_utils.parse_flags(sys.argv[1:] if argv is None else argv,
                                                      "Train a model family with gin configs.")
        partitioning.maybe_initialize_distributed()
        import musiclm_jax.train.data  # noqa: F401  (registers the built-in datasets with gin)
        from musiclm_jax.train import trainer

        gin_utils.parse_config(files, bindings, args.gin_search_path)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        summary = trainer.train()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # gin: a parameter with no binding at all (e.g. a run file was not included)
        if "Required bindings" not in str(e):
            raise
        print(f"error: {str(e).splitlines()[0]}: add the run gin file (gin/runs/) or bind them with --gin.",
              file=sys.stderr)
        return 2
    last = summary.get("last_metrics", {})
    print(f"done: step {summary['step']}, loss {last.get('loss', float('nan')):.4f}, "
          f"skipped {summary['skipped_steps']}, preempted {summary['preempted']}")
    return PREEMPTED_EXIT if summary["preempted"] else 0  # so a job runner does not take a stop for completion


if __name__ == "__main__":
    sys.exit(main())
