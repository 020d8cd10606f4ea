"""Stage language models: the decoder-only Transformer and its sampling loop."""
from musiclm_jax.lm.decoding import sample
from musiclm_jax.lm.transformer import Transformer, TransformerConfig, flops_per_token, loss_and_metrics, preset

__all__ = ["Transformer", "TransformerConfig", "flops_per_token", "loss_and_metrics", "preset", "sample"]
