"""Datasets: `synthcaps` (rendered, captioned corpus) and `audio_captions` (your own folder), both TFDS builders.

Import `musiclm_jax.data.synthcaps.builder` / `musiclm_jax.data.audio_captions.builder` to register them with
tfds; `musiclm_jax.data.commands` adds `musiclm-jax data build` to the CLI.
"""
