"""Decoding defaults and request limits shared by the pipeline and the CLI (no heavy imports: the CLI's --help
must not load jax)."""
from __future__ import annotations

import math

# Decoding settings a model uses unless told otherwise; musiclm.json's "sampling" holds a trained model's own.
# guide_tempo: a tempo-conditioned stage's unconditional guidance branch also loses the tempo, so that guidance
# sharpens the beat as well as the text (True, False, or a list of the stages to do it in, as guide_key).
# guide_key: the same for a key-conditioned stage's key token; guide_melody: for a melody-conditioned stage's melody
# tokens. coarse_guidance_scale: the coarse stage's own scale whenever guidance is on (None: guidance_scale).
SAMPLING_DEFAULTS = {"temperatures": (1.0, 0.95, 0.4), "top_k": 0, "top_p": 1.0, "guidance_scale": 1.0,
                     "guide_tempo": False, "guide_key": False, "guide_melody": False, "coarse_guidance_scale": None}
# Longest audio one call may ask for: generation runs window after window, so a typo such as 1e9 s would run for
# thousands of hours. Pass max_duration_s= (the CLI: --max_duration) to go further.
MAX_DURATION_S = 600.0


def check_duration(duration_s, max_duration_s: float = MAX_DURATION_S, what: str = "duration_s") -> float:
    """Returns `duration_s` as a float, or raises one ValueError saying what to change."""
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s) \
            or duration_s <= 0:
        raise ValueError(f"{what} must be a number of seconds > 0, got {duration_s!r}")
    if duration_s > max_duration_s:
        raise ValueError(f"{what} {duration_s:g} s is over the limit of {max_duration_s:g} s (decoding time grows "
                         f"with it); raise the limit with --max_duration / max_duration_s= if you mean it")
    return float(duration_s)


def add_decoding_args(parser, model_default: str = "default: the model's own (musiclm.json 'sampling'), else %s") -> None:
    """--temperatures, --top_k, --top_p: the decoding options every generating command shares."""
    parser.add_argument("--temperatures", type=float, nargs=3, default=None, metavar=("SEMANTIC", "COARSE", "FINE"),
                        help=model_default % "1.0 0.95 0.4")
    parser.add_argument("--top_k", type=int, default=None, help=model_default % "0 (off)")
    parser.add_argument("--top_p", type=float, default=None, help=model_default % "1.0 (off)")
    parser.add_argument("--coarse_guidance_scale", type=float, default=None,
                        help="the coarse stage's guidance scale whenever guidance is on; "
                             + model_default % "the --guidance_scale")


def decoding_overrides(args) -> dict:
    """The decoding options of `add_decoding_args` the user set, checked (one-line error); unset ones are left out
    so that the model's own settings apply."""
    t, k, p, c = args.temperatures, args.top_k, args.top_p, args.coarse_guidance_scale
    if (t is not None and min(t) < 0) or (k is not None and k < 0) or (p is not None and not 0 < p <= 1) \
            or (c is not None and not (math.isfinite(c) and c >= 0)):
        raise ValueError(f"need --temperatures >= 0 (semantic, coarse, fine), --top_k >= 0, 0 < --top_p <= 1 and "
                         f"--coarse_guidance_scale >= 0, got {t}, {k}, {p}, {c}")
    given = dict(temperatures=None if t is None else tuple(t), top_k=k, top_p=p, coarse_guidance_scale=c)
    return {name: v for name, v in given.items() if v is not None}
