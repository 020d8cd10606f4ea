"""Gin plumbing shared by the entry points: search paths, `--gin_file` / `--gin.KEY=VALUE` flags, REQUIRED check.
(Loaders do not read gin text back: a checkpoint records its model config, train/configs.py.)

Gin lets a binding be `%gin.REQUIRED` (directly or through a macro) and then silently passes a sentinel object at
call time. `check_required()` walks the parsed config first and raises one error naming every such binding.
"""
from __future__ import annotations

import argparse
import logging
import pathlib
from typing import Sequence

import gin
from gin import config as gin_config

# The repository's gin/ folder (includes are written relative to it: `include 'models/lm_tiny.gin'`), in a checkout
# or inside an installed wheel.
from musiclm_jax.resources import GIN_DIR


def gin_shorthand(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits `--gin.KEY=VALUE` arguments off `argv` -> ('KEY = VALUE' bindings, the other arguments)."""
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{key} = {_as_gin_value(value)}")
        else:
            rest.append(arg)
    return bindings, rest


def add_gin_arguments(parser: argparse.ArgumentParser, file_help: str = "gin file (repeatable)") -> None:
    """The gin flags of every `musiclm-jax ... train` command, named as the `python -m` entry points name them
    (`--gin.KEY=VALUE` is taken by `musiclm-jax` itself, see `cli.main`)."""
    parser.add_argument("--gin_file", action="append", default=[], help=file_help)
    parser.add_argument("--gin_bindings", action="append", default=[], help="a binding 'KEY = VALUE' (repeatable)")
    parser.add_argument("--gin_search_path", action="append", default=[], help="extra folder for gin includes")
    parser.add_argument("--gin_search_paths", dest="gin_search_path", action="extend", type=lambda v: v.split(","),
                        help="comma-separated folders for gin includes (T5X's flag)")


def parse_flags(argv: Sequence[str], description: str) -> tuple[list[str], list[str], list[str]]:
    """The T5X flags of the `python -m` entry points, on absl -> (gin files, bindings, search paths).

    `--gin_file` and `--gin_bindings` (repeatable), `--gin_search_paths` (comma-separated; `--gin_search_path`
    repeatable), the `--gin.KEY=VALUE` shorthand, and absl's logging flags (`--verbosity`/`-v`, `--log_dir`,
    `--logtostderr`, ...). Logging goes through absl's handler: this package's loggers at INFO, other libraries' from
WARNING, unless `--verbosity` says otherwise.
    """
    from absl import flags
    from absl import logging as absl_logging

    shorthand, rest = gin_shorthand(argv)
    fv = flags.FlagValues()
    flags.DEFINE_multi_string("gin_file", [], "gin file (repeatable)", flag_values=fv)
    flags.DEFINE_multi_string("gin_bindings", [], "a binding 'KEY = VALUE' (repeatable)", flag_values=fv)
    flags.DEFINE_list("gin_search_paths", [], "comma-separated folders for gin includes", flag_values=fv)
    flags.DEFINE_multi_string("gin_search_path", [], "a folder for gin includes (repeatable)", flag_values=fv)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
        print(f"{description}\n\n{fv.get_help()}\n  --gin.KEY=VALUE: shorthand for --gin_bindings='KEY = VALUE'")
        raise SystemExit(0)
    try:
        unparsed = fv(["prog", *rest], known_only=True)[1:]
        flags.FLAGS.unparse_flags()  # parsed again on each call (tests call several entry points in one process)
        extra = flags.FLAGS(["prog", *unparsed])[1:]
    except flags.UnrecognizedFlagError as e:
        arg = next((a for a in rest if a.lstrip("-").split("=")[0] == e.flagname), f"--{e.flagname}")
        raise ValueError(f"unknown argument {arg!r}: use --gin_file=FILE, --gin.KEY=VALUE, --gin_bindings or "
                         "absl's logging flags (--verbosity, --log_dir)") from None
    except flags.Error as e:
        raise ValueError(f"bad flag: {str(e).splitlines()[0]}") from None
    if extra:
        raise ValueError(f"unknown argument {extra[0]!r}: use --gin_file=FILE, --gin.KEY=VALUE or --gin_bindings")
    if not fv.gin_file:
        raise ValueError("no --gin_file given: pass e.g. --gin_file=gin/experiments/lm_tiny_synthetic.gin")
    absl_logging.use_absl_handler()
    if not flags.FLAGS["verbosity"].present:  # ours at INFO; libraries' absl chatter (orbax's) only from WARNING
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("musiclm_jax").setLevel(logging.INFO)
    return list(fv.gin_file), [*fv.gin_bindings, *shorthand], [*fv.gin_search_paths, *fv.gin_search_path]


def _as_gin_value(text: str) -> str:
    """Leaves gin literals and references alone; a bare word or path (/tmp/x) becomes a quoted string."""
    t = text.strip()
    if not t or t[0] in "'\"@%[({-+.0123456789" or t in ("True", "False", "None"):
        return t
    return repr(t)


def parse_config(files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> None:
    """Parses files then bindings (later wins), with gin/ and the files' folders as include search paths."""
    for path in [*search_paths, str(GIN_DIR), "."]:
        gin.add_config_file_search_path(path)
    resolved = []
    for f in files:
        p = pathlib.Path(f)
        if not p.exists():  # 'experiments/x.gin' or the README's 'gin/experiments/x.gin', from any directory
            for candidate in (GIN_DIR / f, GIN_DIR / f.removeprefix("gin/")):
                if candidate.exists():
                    p = candidate
                    break
        if not p.exists():
            raise ValueError(f"gin file {f!r} not found (looked here and in {GIN_DIR})")
        resolved.append(str(p))
    logging.disable(logging.ERROR)  # gin logs an ERROR for every search path an include is not in
    try:
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=False)
    except SyntaxError as e:  # gin's parse errors carry the file and line
        where = f"{e.filename}:{e.lineno}" if e.filename else "a --gin binding"
        raise ValueError(f"gin syntax error in {where}: {e.msg} ({(e.text or '').strip()!r})") from None
    finally:
        logging.disable(logging.NOTSET)
    check_required()
    check_macros_used(bindings)


def _macros_in(value) -> set[str]:
    name = _macro_name(value)
    if name is not None:
        return {name}
    if isinstance(value, (list, tuple)):
        return set().union(*map(_macros_in, value)) if value else set()
    if isinstance(value, dict):
        return set().union(*map(_macros_in, value.values())) if value else set()
    return set()


def check_macros_used(bindings: Sequence[str]) -> None:
    """Raises for a command-line macro (`--gin.TRAIN_STEPS=30`: a name without a dot) that no binding reads: a typo
    such as `--gin.TRIAN_STEPS=30` would otherwise be accepted and do nothing."""
    given = {b.split("=", 1)[0].strip() for b in bindings if "=" in b}
    given = {g for g in given if g and "." not in g and "/" not in g}
    if not given:
        return
    used = set()
    for (_, selector), params in gin_config._CONFIG.items():
        for value in params.values():
            used |= _macros_in(value)
    unused = sorted(given - used)
    if unused:
        known = sorted(name for (name, selector) in gin_config._CONFIG if selector == "gin.macro" and name in used)
        raise ValueError(f"gin macro(s) {', '.join(unused)} set on the command line but used by no binding (a typo?); "
                         f"the macros this config reads: {', '.join(known) or 'none'}")


def _is_required(value) -> bool:
    return isinstance(value, gin_config.ConfigurableReference) and "gin.REQUIRED" in value.scoped_selector


def _macro_name(value) -> str | None:
    if isinstance(value, gin_config.ConfigurableReference) and value.selector == "gin.macro":
        return value.scoped_selector.split("/")[0]
    return None


def _missing_in(value, seen: tuple = ()) -> list[str]:
    """Names of REQUIRED leaves reachable from `value` (through macros, lists, dicts)."""
    if _is_required(value):
        return [seen[-1] if seen else "?"]
    name = _macro_name(value)
    if name is not None and name not in seen:
        macro = gin_config._CONFIG.get((name, "gin.macro"), {})
        return _missing_in(macro.get("value"), seen + (name,))
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _missing_in(v, seen)]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _missing_in(v, seen)]
    return []


def check_required() -> None:
    """Raises one ValueError listing every binding still set to %gin.REQUIRED."""
    missing = []
    for (scope, selector), params in gin_config._CONFIG.items():
        if selector == "gin.macro":
            continue
        for param, value in params.items():
            for macro in _missing_in(value):
                where = f"{scope + '/' if scope else ''}{selector.split('.')[-1]}.{param}"
                missing.append(where if macro == "?" else f"{macro} (used by {where})")
    if missing:
        first = missing[0].split(" ")[0]
        raise ValueError(f"missing required gin binding(s): {', '.join(sorted(set(missing)))}; set them in a gin "
                         f"file or on the command line, e.g. --gin.{first}=...")
