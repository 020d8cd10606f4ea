"""`musiclm-jax tokenize`: the offline token cache (see tasks/cache.py). Heavy imports stay in the handler."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="tokenize datasets into a SeqIO token cache with Apache Beam",
                              description="Runs the three tokenizers over the tasks' datasets and writes the "
                                          "SeqIO cache (tokenizers from $MUSICLM_CODEC_DIR, $MUSICLM_SEMANTIC_DIR, "
                                          "$MUSICLM_MULAN_DIR or 'random:0').")
    from musiclm_jax.tasks.cache import add_arguments  # light: argparse only
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from musiclm_jax.tasks.cache import run
    run(args)
    return 0
