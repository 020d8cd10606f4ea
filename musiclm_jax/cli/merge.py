"""`musiclm-jax merge`: weight interpolation of two finetunings of one MusicLM (`export.merge`).

  musiclm-jax merge --a out/finetuned_a --b out/finetuned_b --lam 0.3 --out out/merged_0.3
"""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    m = subparsers.add_parser("merge", help="interpolate the stage LMs of two finetunings of one base model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--a", required=True, help="exported MusicLM directory (lam 0 gives it)")
    m.add_argument("--b", required=True, help="another finetuning of the same base (lam 1 gives it)")
    m.add_argument("--lam", type=float, required=True, help="weight of --b, in [0, 1]")
    m.add_argument("--out", required=True, help="new directory for the merged MusicLM")
    m.set_defaults(func=merge)


def merge(args: argparse.Namespace) -> dict:
    from musiclm_jax.export import merge as merge_models

    report = merge_models(args.a, args.b, args.lam, args.out)
    print(json.dumps({"lam": report["lam"], "out": args.out,
                      "stages": {k: v["leaves"] for k, v in report["stages"].items()}}))
    return report
