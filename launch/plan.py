"""What every launcher in launch/ shares: a plan of shell commands, printed (`--dry_run`) or run in order, and the
job flags (gin files and bindings, model dir) passed through unchanged to `python -m musiclm_jax.train` on the hosts.

Standard library only: a launcher runs on a workstation that has `gcloud` / `xpk` / `ssh`, not necessarily JAX.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
REMOTE_REPO = "~/musiclm-jax"


class Plan:
    """An ordered list of (what, command); a command is an argv list (run directly) or a shell string."""

    def __init__(self):
        self.steps: list[tuple[str, str | list[str]]] = []

    def add(self, what: str, command: str | Sequence[str]) -> None:
        self.steps.append((what, command if isinstance(command, str) else list(command)))

    def lines(self) -> list[str]:
        out = []
        for what, cmd in self.steps:
            out += [f"# {what}", cmd if isinstance(cmd, str) else shlex.join(cmd)]
        return out

    def run(self, dry_run: bool, one_shell: bool = False) -> int:
        """Prints (dry run) or runs the steps in order, stopping at the first that fails; `one_shell` runs them as
        one bash script (background processes and a final `wait`)."""
        if dry_run:
            print("\n".join(self.lines()))
            return 0
        if one_shell:
            return subprocess.run(["bash", "-c", "\n".join(self.lines())], cwd=ROOT).returncode
        for what, cmd in self.steps:
            print(f"# {what}", flush=True)
            done = subprocess.run(cmd, shell=isinstance(cmd, str), cwd=ROOT)
            if done.returncode:
                print(f"launch: step '{what}' failed (exit {done.returncode}); fix it and rerun with --steps "
                      "from that step on", file=sys.stderr)
                return done.returncode
        return 0


def main(build) -> int:
    """A launcher's entry point: `build(argv) -> (Plan, args)`, then print or run the plan."""
    out, args = build(None)
    return out.run(args.dry_run, one_shell=getattr(args, "one_shell", False))


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", action="append", default=[], help="experiment gin file (repeatable)")
    p.add_argument("--gin_bindings", action="append", default=[], help="a binding 'KEY = VALUE' (repeatable)")
    p.add_argument("--model_dir", help="where checkpoints go: a bucket path (gs://...) that every host can write")
    p.add_argument("--dry_run", action="store_true", help="print every command, run none")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, *, needs_job: bool = True) -> argparse.Namespace:
    """Parses argv; `--gin.KEY=VALUE` arguments are kept as given in `args.gin_shorthand` (the hosts parse them)."""
    args, rest = p.parse_known_args(argv)
    args.gin_shorthand = [a for a in rest if a.startswith("--gin.") and "=" in a]
    unknown = [a for a in rest if a not in args.gin_shorthand]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)}")
    if needs_job and (not args.gin_file or not args.model_dir):
        p.error("a job needs --gin_file (e.g. gin/experiments/lm_large_pod.gin) and --model_dir (e.g. gs://B/run)")
    return args


def train_argv(args: argparse.Namespace, python: str = ".venv/bin/python", module: str = "musiclm_jax.train"
               ) -> list[str]:
    """The one training command every host runs (the launch path of train/launch.py)."""
    # A bare path is quoted by the hosts' flag parser (train/gin_utils._as_gin_value); one that looks like a number
    # or a reference is not, so it goes quoted.
    model_dir = args.model_dir if args.model_dir[0] not in "'\"@%[({-+.0123456789" else repr(args.model_dir)
    return [python, "-m", module, *(f"--gin_file={f}" for f in args.gin_file), f"--gin.MODEL_DIR={model_dir}",
            *(f"--gin_bindings={b}" for b in args.gin_bindings), *args.gin_shorthand]


def locked_version(package: str) -> str:
    """The version requirements.lock pins (the accelerator wheels must match the CPU ones the suite ran)."""
    m = re.search(rf"^{re.escape(package)}==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    if not m:
        raise SystemExit(f"launch: {package} is not pinned in requirements.lock")
    return m.group(1)


def select(wanted: str, known: Sequence[str]) -> list[str]:
    """The steps named in `wanted` ('sync,setup,train' or 'all'), in the launcher's order; unknown ones are an
    error."""
    names = list(known) if wanted == "all" else [s for s in wanted.split(",") if s]
    bad = [s for s in names if s not in known]
    if bad:
        raise SystemExit(f"launch: unknown step(s) {bad}: choose from {', '.join(known)} (or all)")
    return [s for s in known if s in names]
