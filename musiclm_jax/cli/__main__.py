"""`python -m musiclm_jax.cli ...` = the `musiclm-jax` command (Makefile, the quickstart recipe, launchers)."""
import sys

from musiclm_jax.cli import main

sys.exit(main())
