"""Sample from a trained token LM: `python -m musiclm_jax.train.infer --gin_file=gin/experiments/... [--gin.K=V]`.

Writes JSONL of sampled tokens (see `musiclm_jax.train.inference.infer`).
"""
from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from musiclm_jax.train import gin_utils, partitioning

    try:
        files, bindings, args = gin_utils.parse_flags(sys.argv[1:] if argv is None else argv,
                                                      "Sample from a trained token LM.")
        partitioning.maybe_initialize_distributed()
        from musiclm_jax.train.inference import infer
        import musiclm_jax.train.data  # noqa: F401  (registers the built-in datasets with gin)

        gin_utils.parse_config(files, bindings, args.gin_search_path)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        summary = infer()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # gin: a parameter with no binding at all (e.g. a run file was not included)
        if "Required bindings" not in str(e):
            raise
        print(f"error: {str(e).splitlines()[0]}: add the run gin file (gin/runs/) or bind them with --gin.",
              file=sys.stderr)
        return 2
    print(f"wrote {summary['num_samples']} samples (checkpoint step {summary['step']}) to {summary['output_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
