"""Finetuning of a trained MusicLM's stage LMs (issue 18): `distill.py` (classifier-free-guidance distillation)."""
