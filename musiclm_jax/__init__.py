"""musiclm-jax: MusicLM in JAX/Flax NNX. See DESIGN in the README for the data flow."""

__version__ = "0.1.0"
