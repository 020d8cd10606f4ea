"""The one way a training (or a token-LM sampling run) starts: every `... train` command and
`python -m musiclm_jax.train` go through `launch`.

    summary = launch("musiclm_jax.train.trainer:train", ["gin/experiments/x.gin"], ["K = V"], model_dir="out/x")

In order: `jax.distributed` on a pod (`partitioning.maybe_initialize_distributed`, before anything touches a
device), the gin registrations (`musiclm_jax.train.data` and the family's modules), MODEL_DIR / TRAIN_STEPS bindings
from the command's flags, gin files then bindings (`gin_utils.parse_config`), logging, then the entry function,
imported by name after distributed start. `main` wraps it for `python -m` entry points: one-line errors, exit 2
for bad input and 143 for a preempted run, so a job runner does not take a stop for completion.
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Callable, Sequence

PREEMPTED_EXIT = 143  # 128 + SIGTERM
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def launch(entry: str | Callable[[], dict], gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = (),
           *, registrations: Sequence[str] = (), model_dir: str | None = None, steps: int | None = None) -> dict:
    """Starts `entry` under the configs: "package.module:function" (imported after the distributed start) or a
    callable, called without arguments (gin binds what it calls)."""
    from musiclm_jax.train import gin_utils, partitioning
    from musiclm_jax.train.steps import steps_bindings

    if not gin_files:
        raise ValueError("no --gin_file given: pass e.g. --gin_file=gin/experiments/lm_tiny_synthetic.gin")
    partitioning.maybe_initialize_distributed()
    for module in ("musiclm_jax.train.data", *registrations):
        importlib.import_module(module)
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    bindings = list(bindings) + steps_bindings(steps)
    if model_dir:
        bindings.append(f"MODEL_DIR = {model_dir!r}")
    gin_utils.parse_config(gin_files, bindings, search_paths)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return entry()


def model_dir_of_config() -> str:
    """The model directory the parsed configs name (`train.model_dir`, else the MODEL_DIR macro)."""
    import gin

    for query in ("train.model_dir", "%MODEL_DIR"):
        try:
            value = gin.query_parameter(query)
        except ValueError:
            continue
        if isinstance(value, str):
            return value
    raise ValueError("no model directory: pass --model_dir DIR (or bind MODEL_DIR)")


def done_line(summary: dict, *metrics: str, model_dir: str | None = None) -> str:
    """'done: step N, loss 1.2345, ...' for the last logged values of `metrics` (default: loss)."""
    last = summary.get("last_metrics", {})
    parts = [f"step {summary.get('step')}"]
    parts += [f"{m.replace('_', ' ')} {last.get(m, float('nan')):.4f}" for m in (metrics or ("loss",))]
    if "skipped_steps" in summary:
        parts.append(f"skipped {summary['skipped_steps']}")
    if summary.get("preempted"):
        parts.append("preempted (resumable)")
    return "done: " + ", ".join(parts) + (f"; model in {model_dir}" if model_dir else "")


def main(run: Callable[[list[str]], tuple[dict, str]], argv: Sequence[str] | None = None) -> int:
    """Runs `run(argv) -> (summary, line)` for a `python -m` entry point, printing the line or a one-line error."""
    try:
        summary, line = run(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # gin: a parameter with no binding at all (e.g. a run file was not included)
        if "Required bindings" not in str(e):
            raise
        print(f"error: {str(e).splitlines()[0]}: add the run gin file (gin/runs/) or bind them with --gin.",
              file=sys.stderr)
        return 2
    print(line)
    return PREEMPTED_EXIT if summary.get("preempted") else 0
