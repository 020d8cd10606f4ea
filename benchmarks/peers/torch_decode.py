"""PyTorch decoding peers for benchmarks/decode.py (runs in the peers' Python 3.11 venv: `make bench-peers`).

Two peers, random weights, same sizes (d_model, layers, heads, head_dim, d_ff, vocab) as the JAX model:
  * plain:   a PyTorch decoder written for this benchmark with the JAX model's architecture (pre-RMSNorm, multi-head
             attention with a T5 bucketed relative bias, gated-GELU MLP) and a preallocated KV cache written in place.
  * audiolm: audiolm-pytorch's own `Transformer` (the one its semantic/coarse/fine stages use), embedding and output
             projection around it, decoded the way its wrappers do (its `kv_cache` / `return_kv_cache` API).
             Its architecture differs from ours where the package chose so: one shared key/value head, an MLP-made
             relative bias, 4 hyper-connection residual streams, GEGLU with inner width 8/3 d_model.
Without a cache every peer re-runs the full forward on the growing sequence each step.

Input: `--spec JSON` (a list of runs); output: one JSON list on stdout.
"""
from __future__ import annotations

import argparse
import functools
import importlib.machinery
import importlib.util
import json
import math
import sys
import time
import types

import torch
from torch import nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------
# plain: the JAX model's architecture, in PyTorch.


def relpos_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bidirectional bucketing of rel = k_pos - q_pos (same math as musiclm_jax.lm.transformer)."""
    n = -rel
    half = num_buckets // 2
    out = (n < 0).long() * half
    n = n.abs()
    exact = half // 2
    large = exact + (torch.log(n.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                     * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(n < exact, n, large)


class Block(nn.Module):
    def __init__(self, d, heads, head_dim, d_ff):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, d, bias=False)
        self.wi = nn.Linear(d, 2 * d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d, bias=False)

    def forward(self, x, bias, cache=None, start=0):
        b, q, _ = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, q, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        qh, k, v = qkv[0], qkv[1], qkv[2]
        if cache is not None:  # [2, b, heads, T, head_dim], written in place
            cache[0, :, :, start:start + q] = k
            cache[1, :, :, start:start + q] = v
            k, v = cache[0, :, :, :start + q], cache[1, :, :, :start + q]
        att = F.scaled_dot_product_attention(qh, k, v, attn_mask=bias)
        x = x + self.out(att.transpose(1, 2).reshape(b, q, -1))
        h, gate = self.wi(self.norm2(x)).chunk(2, dim=-1)
        return x + self.wo(F.gelu(h) * gate)


class PlainDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["vocab_size"], d)
        self.relpos = nn.Embedding(cfg["relpos_num_buckets"], cfg["num_heads"])
        self.blocks = nn.ModuleList(Block(d, cfg["num_heads"], cfg["head_dim"], cfg["d_ff"])
                                    for _ in range(cfg["num_layers"]))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.logits = nn.Linear(d, cfg["vocab_size"], bias=False)

    def bias(self, start, q):
        qpos = torch.arange(start, start + q)[:, None]
        kpos = torch.arange(start + q)[None, :]
        buckets = relpos_bucket(kpos - qpos, self.cfg["relpos_num_buckets"], self.cfg["relpos_max_distance"])
        bias = self.relpos(buckets).permute(2, 0, 1)  # [heads, q, k]
        return bias.masked_fill(kpos > qpos, float("-inf"))[None]

    def forward(self, tokens, caches=None, start=0):
        x = self.embed(tokens)
        bias = self.bias(start, tokens.shape[1])
        for i, blk in enumerate(self.blocks):
            x = blk(x, bias, None if caches is None else caches[i], start)
        return self.logits(self.norm(x[:, -1]))

    def decode(self, prompt, new_tokens, use_cache):
        b, p = prompt.shape
        if not use_cache:
            return _decode_uncached(lambda seq: self(seq), prompt, new_tokens)
        c = self.cfg
        caches = torch.zeros(c["num_layers"], 2, b, c["num_heads"], p + new_tokens, c["head_dim"])
        logits = self(prompt, caches, 0)
        out = []
        for step in range(new_tokens):
            tok = _sample(logits)
            out.append(tok)
            if step + 1 < new_tokens:
                logits = self(tok, caches, p + step)
        return torch.cat(out, dim=1)


def _sample(logits):
    return torch.multinomial(F.softmax(logits.float(), dim=-1), 1)


def _decode_uncached(forward_last, prompt, new_tokens):
    seq = prompt
    for _ in range(new_tokens):
        seq = torch.cat([seq, _sample(forward_last(seq))], dim=1)
    return seq[:, prompt.shape[1]:]


# ---------------------------------------------------------------------------------------------------------------
# audiolm: audiolm-pytorch's Transformer.


@functools.lru_cache(maxsize=None)
def _import_audiolm_transformer():
    """Imports audiolm_pytorch.audiolm_pytorch.Transformer without the package's __init__ (which pulls in its
    trainer: accelerate, wandb, ...). Two audio-only modules have no install for this torch build and are replaced
    by empty stand-ins: torchaudio (no wheel for torch 2.13) and fairseq (HuBERT/vq-wav2vec loaders; no py3.11
    wheel). Neither is used by the Transformer."""
    if importlib.util.find_spec("torchaudio") is None:
        ta = types.ModuleType("torchaudio")
        ta.functional, ta.transforms = types.ModuleType("torchaudio.functional"), types.ModuleType("torchaudio.transforms")
        ta.functional.resample = None
        ta.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)  # others probe find_spec("torchaudio")
        sys.modules.update({"torchaudio": ta, "torchaudio.functional": ta.functional,
                            "torchaudio.transforms": ta.transforms})
    if importlib.util.find_spec("fairseq") is None:
        sys.modules["fairseq"] = types.ModuleType("fairseq")
        sys.modules["fairseq"].__spec__ = importlib.machinery.ModuleSpec("fairseq", None)
    spec = importlib.util.find_spec("audiolm_pytorch")
    pkg = types.ModuleType("audiolm_pytorch")
    pkg.__path__, pkg.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules["audiolm_pytorch"] = pkg
    from audiolm_pytorch.audiolm_pytorch import Transformer
    from audiolm_pytorch.version import __version__
    return Transformer, __version__


class AudioLMDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        Transformer, self.version = _import_audiolm_transformer()
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["vocab_size"], d)
        self.transformer = Transformer(dim=d, depth=cfg["num_layers"], heads=cfg["num_heads"],
                                       dim_head=cfg["head_dim"], attn_dropout=0.0, ff_dropout=0.0)
        self.logits = nn.Linear(d, cfg["vocab_size"], bias=False)

    def decode(self, prompt, new_tokens, use_cache):
        if not use_cache:
            return _decode_uncached(lambda seq: self.logits(self.transformer(self.embed(seq))[:, -1]), prompt,
                                    new_tokens)
        seq, kv = prompt, None
        for _ in range(new_tokens):  # as its wrappers do: full ids in, the transformer skips the cached part
            out, kv = self.transformer(self.embed(seq), kv_cache=kv, return_kv_cache=True)
            seq = torch.cat([seq, _sample(self.logits(out[:, -1]))], dim=1)
        return seq[:, prompt.shape[1]:]


# ---------------------------------------------------------------------------------------------------------------


def run(spec):
    torch.manual_seed(0)
    model = (PlainDecoder if spec["impl"] == "plain" else AudioLMDecoder)(spec["cfg"]).eval()
    prompt = torch.randint(0, spec["cfg"]["vocab_size"], (spec["batch"], spec["prompt_len"]))
    times = []
    with torch.inference_mode():
        for _ in range(spec["reps"] + 1):  # the first run is a warm-up
            t0 = time.perf_counter()
            out = model.decode(prompt, spec["new_tokens"], spec["cache"])
            times.append(time.perf_counter() - t0)
    assert out.shape == (spec["batch"], spec["new_tokens"])
    best = min(times[1:])
    return {**{k: spec[k] for k in ("impl", "name", "batch", "prompt_len", "new_tokens", "cache")},
            "seconds": best, "tokens_per_s": spec["batch"] * spec["new_tokens"] / best,
            "version": getattr(model, "version", None) or f"torch {torch.__version__}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON list of runs (written by benchmarks/decode.py)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for spec in json.loads(args.spec):
        try:
            results.append(run(spec))
        except Exception as e:  # report and go on: one peer failing must not hide the others
            results.append({**spec, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
