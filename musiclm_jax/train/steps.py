"""`--steps N` of the training commands (`codec|mulan|semantic train`): one flag that sets the training length.

Light (no jax): the commands register the flag at parse time. The experiments bind every training length to the
TRAIN_STEPS macro (the loop's `num_steps` and the learning-rate schedule's `total_steps`), so binding the macro
changes both; `make_schedule` fits its warmup into a run shorter than the warmup.
"""
from __future__ import annotations

STEPS_HELP = ("number of train steps (binds TRAIN_STEPS: the loop and the learning-rate schedule's length; a warmup "
              "longer than the run is shortened to fit)")


def add_steps_argument(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help=STEPS_HELP)


def steps_bindings(steps: int | None) -> list[str]:
    """The gin bindings of `--steps` ([] when not given); refuses a non-positive count in one line."""
    if steps is None:
        return []
    if int(steps) < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    return [f"TRAIN_STEPS = {int(steps)}"]
