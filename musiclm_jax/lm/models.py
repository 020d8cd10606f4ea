"""The generic token-LM family for the trainer: a decoder-only Transformer on {"inputs"?, "targets"} batches.

Layout: `inputs` [b, P] (optional conditioning prefix, attended bidirectionally, no loss) and `targets` [b, T].
Without inputs, a single BOS token is the prefix. The model reads `concat(inputs, targets[:, :-1])` and its logits
from position P-1 on predict `targets`, so the loss covers exactly the targets (times `weights` [b, T] if given).
The stage LMs of MusicLM use this same family with their own token layouts. seqio's packed prefix-LM features
(`decoder_*`, tasks/data.py `feature_converter(pack=True)`) are refused with one line: they need per-segment
bidirectional prefixes and a BOS per segment, which the Transformer's masks and TokenLM's decoding do not have.
"""
from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.lm import transformer as tr
from musiclm_jax.train.trainer import Family


@gin.configurable
class TokenLM(Family):
    name = "token_lm"

    def __init__(self, config: tr.TransformerConfig = gin.REQUIRED, z_loss: float = 0.0, bos_id: int = 0,
                 uncond_prob: float = 0.0, uncond_span: tuple[int, int] = (0, 0), uncond_id: int = 0):
        """`uncond_prob`: classifier-free-guidance dropout; with this probability per example, training replaces
        positions [uncond_span) of `inputs` by `uncond_id` (the stage layouts: lm/stages.py cond_span, UNCOND)."""
        if not 0.0 <= uncond_prob < 1.0:
            raise ValueError(f"TokenLM.uncond_prob must be in [0, 1), got {uncond_prob}")
        uncond_span = tuple(int(v) for v in uncond_span)
        if uncond_prob > 0 and not (len(uncond_span) == 2 and 0 <= uncond_span[0] < uncond_span[1]):
            raise ValueError(f"TokenLM.uncond_prob > 0 needs uncond_span=(start, stop) with 0 <= start < stop, "
                             f"got {uncond_span}")
        self.uncond_prob, self.uncond_span, self.uncond_id = float(uncond_prob), uncond_span, uncond_id
        if not isinstance(config, tr.TransformerConfig):
            raise ValueError(f"TokenLM.config must be a TransformerConfig (gin: TokenLM.config = "
                             f"@TransformerConfig()), got {type(config).__name__}")
        if not 0 <= bos_id < config.vocab_size:
            raise ValueError(f"bos_id {bos_id} is outside the vocabulary [0, {config.vocab_size})")
        self.config, self.z_loss, self.bos_id = config, z_loss, bos_id

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {"model": tr.Transformer(self.config, rngs=rngs)}

    # -- layout ------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_unpacked(batch: dict) -> None:
        if any(k.startswith("decoder_") for k in batch):
            raise ValueError("packed features are not supported by TokenLM yet; use pack=False")

    # -- layout (unpacked) ---------------------------------------------------------------------------------------
    def _prefix(self, batch: dict) -> jax.Array:
        targets = batch["targets"]
        if "inputs" in batch:
            return batch["inputs"]
        return jnp.full((targets.shape[0], 1), self.bos_id, targets.dtype)

    def _logits(self, model: tr.Transformer, batch: dict, *, deterministic: bool, rng=None) -> jax.Array:
        self._check_unpacked(batch)
        if "targets" not in batch:
            raise ValueError(f"a token-LM batch needs 'targets' (and optionally 'inputs', 'weights'); got "
                             f"{sorted(batch)}")
        targets = batch["targets"]
        prefix = self._prefix(batch)
        tokens = jnp.concatenate([prefix, targets[:, :-1]], axis=1)
        prefix_len = jnp.full((targets.shape[0],), prefix.shape[1], jnp.int32) if "inputs" in batch else None
        rngs = None if rng is None else nnx.Rngs(dropout=rng)
        logits = model(tokens, prefix_len=prefix_len, deterministic=deterministic, rngs=rngs)
        return logits[:, prefix.shape[1] - 1:]

    def _sums(self, logits, batch):
        loss, m = tr.loss_and_metrics(logits, batch["targets"], batch.get("weights"), z_loss=self.z_loss)
        n = m["num_tokens"]
        return loss * n, n, {"loss": loss * n, "accuracy": m["accuracy"] * n}

    # -- the family contract -----------------------------------------------------------------------------------
    def drop_conditioning(self, batch: dict, rng: jax.Array) -> dict:
        """Classifier-free-guidance dropout: each row's conditioning span becomes `uncond_id` with `uncond_prob`."""
        if self.uncond_prob == 0.0 or "inputs" not in batch:
            return batch
        inputs = batch["inputs"]
        start, stop = self.uncond_span
        if stop > inputs.shape[1]:
            raise ValueError(f"TokenLM.uncond_span {self.uncond_span} is past the inputs length {inputs.shape[1]}")
        drop = jax.random.bernoulli(jax.random.fold_in(rng, 0x5EED), self.uncond_prob, (inputs.shape[0], 1))
        pos = jnp.arange(inputs.shape[1])[None, :]
        span = (pos >= start) & (pos < stop)
        return {**batch, "inputs": jnp.where(drop & span, jnp.asarray(self.uncond_id, inputs.dtype), inputs)}

    def loss(self, models, batch, rng):
        batch = self.drop_conditioning(batch, rng)
        deterministic = self.config.dropout_rate == 0.0
        logits = self._logits(models["model"], batch, deterministic=deterministic,
                              rng=None if deterministic else rng)
        return self._sums(logits, batch)

    def eval(self, models, batch):
        _, weight, metrics = self._sums(self._logits(models["model"], batch, deterministic=True), batch)
        return weight, metrics

    def batch_axes(self, batch: dict) -> dict[str, tuple]:
        return {k: ("batch", "length")[:np.ndim(v)] for k, v in batch.items()}

    def tokens(self, batch: dict) -> int:
        self._check_unpacked(batch)
        return int(np.prod(np.shape(batch["targets"])))

    def flops(self, batch: dict) -> float:
        self._check_unpacked(batch)
        b, t = np.shape(batch["targets"])
        seq_len = t - 1 + (np.shape(batch["inputs"])[1] if "inputs" in batch else 1)
        return tr.flops_per_token(self.config, seq_len) * b * t

    # -- inference ---------------------------------------------------------------------------------------------
    def predict(self, models, batch: dict, *, rng: jax.Array, prompt_length: int, max_new_tokens: int,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
                eos_id: int | None = None) -> dict[str, np.ndarray]:
        """Continues the first `prompt_length` target tokens of every row (after its prefix) with KV-cache sampling.

        Returns numpy {"prompt": [b, P], "tokens": [b * num_samples, max_new_tokens], "lengths": [b * num_samples]}.
        """
        from musiclm_jax.lm.decoding import sample

        targets = jnp.asarray(batch["targets"])
        if not 0 <= prompt_length <= targets.shape[1]:
            raise ValueError(f"prompt_length {prompt_length} must be in [0, {targets.shape[1]}] (target length)")
        prefix = self._prefix({**batch, "targets": targets})
        prompts = jnp.concatenate([prefix, targets[:, :prompt_length]], axis=1)
        prefix_len = jnp.full((targets.shape[0],), prefix.shape[1], jnp.int32) if "inputs" in batch else None
        tokens, lengths = sample(models["model"], prompts, max_new_tokens=max_new_tokens, rng=rng,
                                 temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
                                 eos_id=eos_id, prefix_len=prefix_len)
        return {"prompt": np.asarray(prompts), "tokens": np.asarray(tokens), "lengths": np.asarray(lengths)}
