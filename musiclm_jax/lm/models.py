"""The generic token-LM family for the trainer: a decoder-only Transformer on {"inputs"?, "targets"} batches.

Layout: `inputs` [b, P] (optional conditioning prefix, attended bidirectionally, no loss) and `targets` [b, T].
Without inputs, a single BOS token is the prefix. The model reads `concat(inputs, targets[:, :-1])` and its logits
from position P-1 on predict `targets`, so the loss covers exactly the targets (times `weights` [b, T] if given).
The stage LMs of MusicLM use this same family with their own token layouts.

Packed batches: seqio's prefix-LM features (`decoder_*`, tasks/data.py `feature_converter(pack=True)`). Each segment
reads what the unpacked layout reads: the model takes `decoder_target_tokens` (not seqio's `decoder_input_tokens`,
which put a BOS at every segment start), positions restart per segment, a segment's inputs are its bidirectional
prefix, and position t predicts token t + 1 of its own segment. So a model trained packed decodes with the
unpacked decoding code. A segment without inputs has no BOS: its first target is context, not predicted.
"""
from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.lm import transformer as tr
from musiclm_jax.train import configs
from musiclm_jax.train.trainer import Family


@gin.configurable
class TokenLM(Family):
    name = "token_lm"

    def __init__(self, config: tr.TransformerConfig = gin.REQUIRED, z_loss: float = 0.0, bos_id: int = 0,
                 uncond_prob: float = 0.0, uncond_span: tuple[int, int] = (0, 0), uncond_id: int = 0,
                 aligned=None, melody_prob: float = 0.0, melody_ids: tuple[int, int] = (0, 0),
                 tempo_prob: float = 0.0, tempo_ids: tuple[int, int] = (0, 0),
                 key_prob: float = 0.0, key_ids: tuple[int, int] = (0, 0)):
        """`uncond_prob`: classifier-free-guidance dropout; with this probability per example, training replaces
        positions [uncond_span) of `inputs` by `uncond_id` (the stage layouts: lm/stages.py cond_span, UNCOND).
        `aligned`: a StageLayout whose `aligned_ids(inputs, num_targets)` gives the time-aligned conditioning ids
        (with `config.aligned_inputs`; gin: `@stage_aligned()`), or None. `melody_prob`: melody-conditioning
        dropout, drawn independently of the text's: the `inputs` ids in `melody_ids` = [lo, hi) become `uncond_id`
        (lm/stages.py melody_ids: the stage's melody streams, wherever the prefix holds them). `tempo_prob`,
        `tempo_ids`: the same for the tempo tokens (lm/stages.py tempo_ids), so the stage also works without a
        tempo; `key_prob`, `key_ids`: for the key token (lm/stages.py key_ids)."""
        if not all(0.0 <= p < 1.0 for p in (uncond_prob, melody_prob, tempo_prob, key_prob)):
            raise ValueError(f"TokenLM.uncond_prob, melody_prob, tempo_prob and key_prob must be in [0, 1), got "
                             f"{uncond_prob}, {melody_prob}, {tempo_prob}, {key_prob}")
        melody_ids, tempo_ids = tuple(int(v) for v in melody_ids), tuple(int(v) for v in tempo_ids)
        key_ids = tuple(int(v) for v in key_ids)
        for name, prob, ids in (("melody", melody_prob, melody_ids), ("tempo", tempo_prob, tempo_ids),
                                ("key", key_prob, key_ids)):
            if prob > 0 and not (len(ids) == 2 and 0 < ids[0] < ids[1]):
                raise ValueError(f"TokenLM.{name}_prob > 0 needs {name}_ids=(lo, hi), the {name} id range (gin: "
                                 f"@stage_{name}_ids()), got {ids}")
        self.melody_prob, self.melody_ids = float(melody_prob), melody_ids
        self.tempo_prob, self.tempo_ids = float(tempo_prob), tempo_ids
        self.key_prob, self.key_ids = float(key_prob), key_ids
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
        if (aligned is not None) != config.aligned_inputs:
            raise ValueError("TokenLM.aligned (a StageLayout) and TransformerConfig.aligned_inputs must be set "
                             "together (gin: ALIGNED = True in a stage experiment)")
        self.aligned = aligned

    def init(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {"model": tr.Transformer(self.config, rngs=rngs)}

    def model_config(self) -> dict:
        """The Transformer's config and, with time-aligned conditioning, the stage layout the ids come from (what
        `pipeline.load_stage_lm` rebuilds the model from)."""
        aligned = None if self.aligned is None else {"stage": self.aligned.stage,
                                                     "sizes": configs.to_dict(self.aligned.sizes)}
        return {"transformer": configs.to_dict(self.config), "aligned": aligned}

    # -- layout --------------------------------------------------------------------------------------------------
    def _prefix(self, batch: dict) -> jax.Array:
        targets = batch["targets"]
        if "inputs" in batch:
            return batch["inputs"]
        return jnp.full((targets.shape[0], 1), self.bos_id, targets.dtype)

    @staticmethod
    def _packed(batch: dict) -> dict:
        """The packed layout: model tokens, segment ids, bidirectional flags, and the aligned targets and weights."""
        tokens = batch["decoder_target_tokens"]
        seg = batch.get("decoder_segment_ids", jnp.ones_like(tokens))  # PrefixLMFeatureConverter(pack=False)
        same = jnp.pad(seg[:, 1:] == seg[:, :-1], ((0, 0), (0, 1)))  # token t + 1 is in t's segment

        def next_token(x):
            return jnp.where(same, jnp.pad(x[:, 1:], ((0, 0), (0, 1))), 0)

        # seqio's causal_attention is in decoder_input_tokens coordinates, one to the right of the tokens we feed.
        bidirectional = next_token(batch["decoder_causal_attention"]) > 0
        return {"tokens": tokens, "segment_ids": seg, "bidirectional": bidirectional, "targets": next_token(tokens),
                "weights": next_token(batch["decoder_loss_weights"])}

    def _forward(self, model: tr.Transformer, batch: dict, *, deterministic: bool, rng=None):
        """(logits, targets, weights): logits[:, t] predict targets[:, t]."""
        rngs = None if rng is None else nnx.Rngs(dropout=rng)
        if "decoder_target_tokens" in batch:
            if self.aligned is not None:
                raise ValueError("time-aligned conditioning reads unpacked batches ('inputs', 'targets'): "
                                 "train it with packing off")
            p = self._packed(batch)
            logits = model(p["tokens"], segment_ids=p["segment_ids"], bidirectional=p["bidirectional"],
                           deterministic=deterministic, rngs=rngs)
            return logits, p["targets"], p["weights"]
        if "targets" not in batch:
            raise ValueError(f"a token-LM batch needs 'targets' (and optionally 'inputs', 'weights') or seqio's packed "
                             f"'decoder_*' features; got {sorted(batch)}")
        targets = batch["targets"]
        prefix = self._prefix(batch)
        tokens = jnp.concatenate([prefix, targets[:, :-1]], axis=1)
        prefix_len = jnp.full((targets.shape[0],), prefix.shape[1], jnp.int32) if "inputs" in batch else None
        aligned = self.aligned_ids(prefix, targets.shape[1])
        logits = model(tokens, prefix_len=prefix_len, aligned=aligned, deterministic=deterministic, rngs=rngs)
        return logits[:, prefix.shape[1] - 1:], targets, batch.get("weights")

    def aligned_ids(self, inputs, num_targets: int):
        """The aligned ids of `concat(inputs, targets[:, :num_targets - 1])`, or None without aligned conditioning."""
        return None if self.aligned is None else self.aligned.aligned_ids(inputs, num_targets)

    def _sums(self, logits, targets, weights):
        loss, m = tr.loss_and_metrics(logits, targets, weights, z_loss=self.z_loss)
        n = m["num_tokens"]
        return loss * n, n, {"loss": loss * n, "accuracy": m["accuracy"] * n}

    # -- the family contract -----------------------------------------------------------------------------------
    def drop_conditioning(self, batch: dict, rng: jax.Array) -> dict:
        """Classifier-free-guidance dropout: each row's conditioning span becomes `uncond_id` with `uncond_prob`;
        packed, each segment's span independently (its inputs positions whose in-segment position is in the span)."""
        extra = ((self.melody_prob, self.melody_ids), (self.tempo_prob, self.tempo_ids),
                 (self.key_prob, self.key_ids))
        if self.uncond_prob == 0.0 and all(prob == 0.0 for prob, _ in extra):
            return batch
        start, stop = self.uncond_span
        key = jax.random.fold_in(rng, 0x5EED)
        if "decoder_target_tokens" in batch and any(prob > 0 for prob, _ in extra):
            raise ValueError("melody-, tempo- and key-conditioning dropout read unpacked batches ('inputs', "
                             "'targets'): "
                             "train that stage with packing off")
        if "decoder_target_tokens" in batch:
            if self.aligned is not None:
                raise ValueError("time-aligned conditioning reads unpacked batches ('inputs', 'targets'): "
                                 "train it with packing off")
            p = self._packed(batch)
            tokens, seg = p["tokens"], p["segment_ids"]
            per_segment = jax.random.bernoulli(key, self.uncond_prob, (seg.shape[0], seg.shape[1] + 1))
            drop = jnp.take_along_axis(per_segment, seg, axis=1)  # segment ids are < length + 1
            pos = tr.segment_positions(seg)
            span = p["bidirectional"] & (pos >= start) & (pos < stop)
            uncond = jnp.asarray(self.uncond_id, tokens.dtype)
            return {**batch, "decoder_target_tokens": jnp.where(drop & span, uncond, tokens)}
        if "inputs" not in batch:
            return batch
        inputs = batch["inputs"]
        pos = jnp.arange(inputs.shape[1])[None, :]
        uncond = jnp.asarray(self.uncond_id, inputs.dtype)
        if self.uncond_prob > 0:
            start, stop = self.uncond_span
            if stop > inputs.shape[1]:
                raise ValueError(f"TokenLM conditioning span ({start}, {stop}) does not fit the inputs length "
                                 f"{inputs.shape[1]}")
            drop = jax.random.bernoulli(key, self.uncond_prob, (inputs.shape[0], 1))
            inputs = jnp.where(drop & (pos >= start) & (pos < stop), uncond, inputs)
        # Their own draws: a row may keep the text and lose the melody, the tempo or the key, or the reverse.
        for i, (prob, (lo, hi)) in enumerate(extra):
            if prob > 0:
                drop = jax.random.bernoulli(jax.random.fold_in(key, 1 + i), prob, (inputs.shape[0], 1))
                inputs = jnp.where(drop & (inputs >= lo) & (inputs < hi), uncond, inputs)
        return {**batch, "inputs": inputs}

    def loss(self, models, batch, rng):
        batch = self.drop_conditioning(batch, rng)
        deterministic = self.config.dropout_rate == 0.0
        return self._sums(*self._forward(models["model"], batch, deterministic=deterministic,
                                         rng=None if deterministic else rng))

    def eval(self, models, batch):
        _, weight, metrics = self._sums(*self._forward(models["model"], batch, deterministic=True))
        return weight, metrics

    def batch_axes(self, batch: dict) -> dict[str, tuple]:
        return {k: ("batch", "length")[:np.ndim(v)] for k, v in batch.items()}

    def tokens(self, batch: dict) -> int:
        """Target positions; packed: the target tokens (nonzero loss weight; numpy only, no device sync)."""
        if "decoder_loss_weights" in batch:
            return int(np.count_nonzero(batch["decoder_loss_weights"]))
        return int(np.prod(np.shape(batch["targets"])))

    def flops(self, batch: dict) -> float:
        if "decoder_target_tokens" in batch:  # every packed position is computed at the packed length
            b, n = np.shape(batch["decoder_target_tokens"])
            return tr.flops_per_token(self.config, n) * b * n
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

        if "targets" not in batch:
            raise ValueError(f"TokenLM.predict reads unpacked batches ('targets', optional 'inputs'); got "
                             f"{sorted(batch)}")
        targets = jnp.asarray(batch["targets"])
        if not 0 <= prompt_length <= targets.shape[1]:
            raise ValueError(f"prompt_length {prompt_length} must be in [0, {targets.shape[1]}] (target length)")
        prefix = self._prefix({**batch, "targets": targets})
        prompts = jnp.concatenate([prefix, targets[:, :prompt_length]], axis=1)
        prefix_len = jnp.full((targets.shape[0],), prefix.shape[1], jnp.int32) if "inputs" in batch else None
        aligned = self.aligned_ids(prefix, prompt_length + max_new_tokens)
        tokens, lengths = sample(models["model"], prompts, max_new_tokens=max_new_tokens, rng=rng,
                                 temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
                                 eos_id=eos_id, prefix_len=prefix_len, aligned=aligned)
        return {"prompt": np.asarray(prompts), "tokens": np.asarray(tokens), "lengths": np.asarray(lengths)}
