"""Autoregressive sampling with a KV cache: one jitted program per shape, the token loop in `lax.while_loop`.

    tokens, lengths = sample(model, prompts, max_new_tokens=64, rng=jax.random.key(0), temperature=0.95, top_k=250)

Prompts come right-padded ([b, P] plus `prompt_lengths`); inside, each row is left-aligned so that every row writes
the same cache slot at every step (one `dynamic_update_slice` for the batch). Left padding has position -1, so it
is never attended, and real tokens keep positions 0..len-1: a short prompt decodes exactly as it would alone.

Steps: prefill (one forward over the prompts writes the cache), sample token 0 from the last prompt logits, then
`max_new_tokens - 1` single-token extends. Per step: classifier-free guidance (conditional and unconditional rows in
one doubled batch, ``uncond + s * (cond - uncond)``), then `logit_mask_fn(step, logits)`, then temperature
(0 = greedy), top-k, top-p. Rows that emitted `eos_id` emit `pad_id` afterwards; the loop ends when all rows are done.

Randomness: `rng` is one key (step t draws every row from `fold_in(rng, t)` at once) or one key per prompt [b]:
then sample j of prompt i uses `fold_in(key_i, j)` (key_i itself when num_samples == 1) and step t draws that row
alone from `fold_in(row_key, t)`, so a row's tokens do not depend on the other rows of the batch. One prompt with
keys `[k]` samples exactly what it samples with the single key `k`.

Compilation is keyed on shapes and the static options (top_k, top_p, use_cache, logit_mask_fn, ...); temperature and
guidance_scale are traced, so sweeping them does not recompile. Pass the same `logit_mask_fn` object each call
(a module-level function or one `functools.partial`), not a fresh lambda, or every call compiles again.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from musiclm_jax.lm import transformer as tr
from musiclm_jax.train import partitioning

LogitMaskFn = Callable[[jax.Array, jax.Array], jax.Array]
NEG_INF = -1e30  # finite, so masked logits stay NaN-free through guidance arithmetic


def left_align(prompts: jax.Array, lengths: jax.Array, pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Right-padded [b, P] prompts -> (left-padded tokens, positions with -1 on the padding)."""
    width = prompts.shape[1]
    shift = width - lengths.astype(jnp.int32)[:, None]
    positions = jnp.arange(width, dtype=jnp.int32)[None, :] - shift
    tokens = jnp.take_along_axis(prompts, jnp.maximum(positions, 0), axis=1)
    return jnp.where(positions >= 0, tokens, pad_id), jnp.where(positions >= 0, positions, -1)


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Keeps the top-k logits and the smallest set whose probability reaches top_p; the rest become NEG_INF."""
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate: the first always stays
        kept = jnp.where(before < top_p, sorted_desc, jnp.inf)
        cutoff = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def fold_in(rng: jax.Array, data) -> jax.Array:
    """`jax.random.fold_in` of one key, or of each key of a batch [b] (all with the same data)."""
    if rng.ndim == 0:
        return jax.random.fold_in(rng, data)
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, data)


def sample_keys(keys: jax.Array, num_samples: int) -> jax.Array:
    """Per-prompt keys [b] -> per-row keys [b * num_samples] in `sample`'s row order: sample j of prompt i gets
    fold_in(key_i, j), or key_i itself when num_samples == 1."""
    if num_samples == 1:
        return keys
    fold_each = jax.vmap(jax.vmap(jax.random.fold_in, in_axes=(None, 0)), in_axes=(0, None))  # [b, num_samples]
    return fold_each(keys, jnp.arange(num_samples)).reshape(-1)


def sample_logits(rng, logits, temperature, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """One token per row from float logits [rows, vocab]; temperature 0 (traced is fine) means greedy.
    `rng`: one key for all rows, or one key per row [rows] (each row drawn from its own key alone)."""
    greedy = jnp.argmax(logits, axis=-1)
    filtered = filter_logits(logits, top_k=top_k, top_p=top_p)
    scaled = filtered / jnp.maximum(temperature, 1e-6)
    if rng.ndim == 0:
        drawn = jax.random.categorical(rng, scaled, axis=-1)
    else:
        drawn = jax.vmap(functools.partial(jax.random.categorical, axis=-1))(rng, scaled)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


def sample(model: nnx.Module, prompts: jax.Array, *, max_new_tokens: int, rng: jax.Array,
           prompt_lengths: jax.Array | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           logit_mask_fn: LogitMaskFn | None = None, guidance_scale: float = 1.0,
           uncond_prompts: jax.Array | None = None, uncond_lengths: jax.Array | None = None,
           num_samples: int = 1, eos_id: int | None = None, pad_id: int = 0,
           prefix_len: jax.Array | None = None, use_cache: bool = True,
           aligned: jax.Array | None = None, uncond_aligned: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Samples `max_new_tokens` continuations of right-padded `prompts` [b, P] (every prompt needs >= 1 token).

    Returns `(tokens, lengths)`: tokens [b * num_samples, max_new_tokens] int32 (the samples of prompt i are rows
    i*num_samples .. i*num_samples+num_samples-1; `pad_id` after EOS), lengths [b * num_samples] = tokens generated,
    EOS included. `uncond_prompts` [b, P'] (and `uncond_lengths`) switch on classifier-free guidance with
    `guidance_scale`. `prefix_len` [b]: bidirectional prefix inside each prompt (see Transformer).
    `rng`: one key, or one key per prompt [b] (see the module docstring: rows then do not depend on each other).
    `use_cache=False` re-runs the full forward every step (the no-cache baseline for benchmarks and tests).
    `aligned` [b, P + max_new_tokens - 1] (models with `aligned_inputs`): the aligned id of every position of
    prompt + generated tokens, indexed by position (lm/stages.py `aligned_ids`); the unconditional twins share it,
    or read `uncond_aligned` (same shape; e.g. all -1, so that guidance also sharpens what the aligned ids say).
    The mesh and rules active in `partitioning.axis_rules(...)` at call time shard the batch and cache.
    """
    tokens, lengths, _ = generate(model, prompts, max_new_tokens=max_new_tokens, rng=rng,
                                  prompt_lengths=prompt_lengths, temperature=temperature, top_k=top_k, top_p=top_p,
                                  logit_mask_fn=logit_mask_fn, guidance_scale=guidance_scale,
                                  uncond_prompts=uncond_prompts, uncond_lengths=uncond_lengths,
                                  num_samples=num_samples, eos_id=eos_id, pad_id=pad_id, prefix_len=prefix_len,
                                  use_cache=use_cache, aligned=aligned, uncond_aligned=uncond_aligned)
    return tokens, lengths


def generate(model, prompts, *, max_new_tokens, rng, prompt_lengths=None, temperature=1.0, top_k=0, top_p=1.0,
             logit_mask_fn=None, guidance_scale=1.0, uncond_prompts=None, uncond_lengths=None, num_samples=1,
             eos_id=None, pad_id=0, prefix_len=None, use_cache=True, aligned=None, uncond_aligned=None):
    """Like `sample`, plus the number of loop steps actually run (for tests and benchmarks)."""
    prompts = jnp.asarray(prompts, jnp.int32)
    if prompts.ndim != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must be [batch, length>=1] token ids (start with a BOS token), got {prompts.shape}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    b = prompts.shape[0]
    prompt_lengths = _lengths(prompt_lengths, prompts, "prompt_lengths")
    guided = uncond_prompts is not None
    if guided:
        uncond_prompts = jnp.asarray(uncond_prompts, jnp.int32)
        if uncond_prompts.ndim != 2 or uncond_prompts.shape[0] != b:
            raise ValueError(f"uncond_prompts must be [{b}, length], got {uncond_prompts.shape}")
        uncond_lengths = _lengths(uncond_lengths, uncond_prompts, "uncond_lengths")
    elif guidance_scale != 1.0:
        raise ValueError("guidance_scale != 1 needs uncond_prompts (the unconditional prompt of every row)")
    prefix = None if prefix_len is None else jnp.broadcast_to(jnp.asarray(prefix_len, jnp.int32), (b,))
    if model.cfg.aligned_inputs != (aligned is not None):
        raise ValueError("this LM was trained with time-aligned conditioning: pass aligned= (lm/stages.py "
                         "aligned_ids)" if aligned is None else "aligned= was passed to an LM trained without it")
    if aligned is not None:
        aligned = jnp.asarray(aligned, jnp.int32)
        if aligned.shape[:2] != (b, prompts.shape[1] + max_new_tokens - 1) or aligned.ndim not in (2, 3):
            raise ValueError(f"aligned must be [{b}, {prompts.shape[1] + max_new_tokens - 1}] (prompt width + "
                             f"max_new_tokens - 1), got {aligned.shape}")
    if uncond_aligned is not None:
        if aligned is None or not guided:
            raise ValueError("uncond_aligned= needs aligned= and uncond_prompts= (guidance)")
        uncond_aligned = jnp.asarray(uncond_aligned, jnp.int32)
        if uncond_aligned.shape != aligned.shape:
            raise ValueError(f"uncond_aligned must have aligned's shape {aligned.shape}, got {uncond_aligned.shape}")
        aligned = jnp.concatenate([aligned, uncond_aligned])   # the guided rows read the second half
    rng = _keys(rng, b)
    vocab = model.cfg.vocab_size
    for name, tok in (("pad_id", pad_id), ("eos_id", eos_id)):
        if tok is not None and not 0 <= tok < vocab:
            raise ValueError(f"{name}={tok} is outside the vocabulary [0, {vocab})")

    graphdef, state = nnx.split(model)
    mesh, rules = partitioning.current()
    return _generate_jit(graphdef, state, prompts, prompt_lengths, uncond_prompts, uncond_lengths, prefix, aligned, rng,
                         jnp.asarray(temperature, jnp.float32), jnp.asarray(guidance_scale, jnp.float32),
                         max_new_tokens=max_new_tokens, top_k=int(top_k), top_p=float(top_p),
                         logit_mask_fn=logit_mask_fn, num_samples=num_samples, eos_id=eos_id, pad_id=pad_id,
                         use_cache=use_cache, mesh=mesh, rules=tuple(rules))


def _lengths(lengths, prompts, name):
    if lengths is None:
        return jnp.full((prompts.shape[0],), prompts.shape[1], jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    if lengths.shape != (prompts.shape[0],):
        raise ValueError(f"{name} must have shape [{prompts.shape[0]}], got {lengths.shape}")
    try:
        bad = int(lengths.min()) < 1 or int(lengths.max()) > prompts.shape[1]
    except jax.errors.ConcretizationTypeError:  # traced by an outer jit: cannot check here
        bad = False
    if bad:
        raise ValueError(f"{name} must be in [1, {prompts.shape[1]}] (every prompt needs at least a BOS token)")
    return lengths


def _keys(rng, b):
    """`rng` as a typed key array: one key (shape ()) or one per prompt ([b])."""
    rng = jnp.asarray(rng)
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):  # raw uint32 key data (jax.random.PRNGKey)
        rng = jax.random.wrap_key_data(rng)
    if rng.shape not in ((), (b,)):
        raise ValueError(f"rng must be one key or one key per prompt [{b}], got keys of shape {rng.shape}")
    return rng


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "top_p", "logit_mask_fn",
                                             "num_samples", "eos_id", "pad_id", "use_cache", "mesh", "rules"))
def _generate_jit(graphdef, state, prompts, lengths, uncond, uncond_lengths, prefix, aligned, rng, temperature,
                  scale, *, max_new_tokens, top_k, top_p, logit_mask_fn, num_samples, eos_id, pad_id, use_cache, mesh,
                  rules):
    with partitioning.axis_rules(mesh, rules):
        model = tr.cast_matmul_weights(nnx.merge(graphdef, state))  # a traced copy: the caller's model is untouched
        return _generate(model, prompts, lengths, uncond, uncond_lengths, prefix, aligned, rng, temperature, scale,
                         max_new_tokens=max_new_tokens, top_k=top_k, top_p=top_p, logit_mask_fn=logit_mask_fn,
                         num_samples=num_samples, eos_id=eos_id, pad_id=pad_id, use_cache=use_cache)


def _generate(model, prompts, lengths, uncond, uncond_lengths, prefix, aligned, rng, temperature, scale, *,
              max_new_tokens, top_k, top_p, logit_mask_fn, num_samples, eos_id, pad_id, use_cache):
    guided = uncond is not None
    rows = prompts.shape[0] * num_samples
    rep = lambda x: None if x is None else jnp.repeat(x, num_samples, axis=0)
    prompts, lengths, prefix, aligned = rep(prompts), rep(lengths), rep(prefix), rep(aligned)
    if rng.ndim:  # one key per prompt -> one per sample row (the guided twins share their row's single draw)
        rng = sample_keys(rng, num_samples)
    if guided:  # one batch: conditional rows first, then their unconditional twins; both left-aligned to one width
        width = max(prompts.shape[1], uncond.shape[1])
        pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=pad_id)
        prompts = jnp.concatenate([pad(prompts), pad(rep(uncond))])
        lengths = jnp.concatenate([lengths, rep(uncond_lengths)])
        prefix = None if prefix is None else jnp.concatenate([prefix, prefix])
        if aligned is not None and aligned.shape[0] == rows:   # else: [aligned; uncond_aligned] was given
            aligned = jnp.concatenate([aligned, aligned])
    batch_axes = ("batch", "length")
    toks, pos = left_align(prompts, lengths, pad_id)
    toks = partitioning.with_logical_constraint(toks, batch_axes)
    width = toks.shape[1]
    total = width + max_new_tokens - 1  # the last sampled token is never fed back

    def aligned_at(positions):  # aligned ids by position; -1 (none) on the left padding
        if aligned is None:
            return None
        where = jnp.clip(positions, 0, aligned.shape[1] - 1)
        if aligned.ndim == 3:   # several aligned ids per position
            ids = jnp.take_along_axis(aligned, where[..., None], axis=1)
            return jnp.where(positions[..., None] >= 0, ids, -1)
        ids = jnp.take_along_axis(aligned, where, axis=1)
        return jnp.where(positions >= 0, ids, -1)

    def next_token(step, logits, done, key):
        logits = logits[:, -1].astype(jnp.float32)
        if guided:
            cond, unc = logits[:rows], logits[rows:]
            logits = unc + scale * (cond - unc)
        if logit_mask_fn is not None:
            logits = logit_mask_fn(step, logits)
        tok = sample_logits(fold_in(key, step), logits, temperature, top_k=top_k, top_p=top_p)
        tok = jnp.where(done, pad_id, tok)
        if eos_id is not None:
            done = done | (tok == eos_id)
        return tok, done

    if use_cache:
        cache = model.init_cache(toks.shape[0], total)
        logits, cache = model.extend(toks, cache, positions=pos, prefix_len=prefix, aligned=aligned_at(pos))
        carry_model = cache
    else:  # a fixed [B, total] buffer re-read in full every step (causality by slot hides the unfilled tail)
        buf = jnp.pad(toks, ((0, 0), (0, total - width)), constant_values=pad_id)
        buf_pos = jnp.concatenate([pos, lengths[:, None] + jnp.arange(total - width, dtype=jnp.int32)], axis=1)
        logits = model(toks, positions=pos, prefix_len=prefix, aligned=aligned_at(pos))
        carry_model = buf

    done = jnp.zeros((rows,), bool)
    tok, done = next_token(jnp.int32(0), logits, done, rng)
    out = jnp.full((rows, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    n_gen = jnp.ones((rows,), jnp.int32)

    def cond_fn(c):
        step, _, _, done, _, _ = c
        return (step < max_new_tokens) & ~jnp.all(done)

    def body_fn(c):
        step, carried, last, done, out, n_gen = c
        feed = jnp.concatenate([last, last]) if guided else last
        feed_pos = lengths + step - 1  # the fed token is generated token step-1
        if use_cache:
            logits, carried = model.extend(feed[:, None], carried, positions=feed_pos[:, None], prefix_len=prefix,
                                           aligned=aligned_at(feed_pos[:, None]))
        else:
            slot = width + step - 1
            carried = jax.lax.dynamic_update_slice_in_dim(carried, feed[:, None], slot, axis=1)
            full = model(carried, positions=buf_pos, prefix_len=prefix, aligned=aligned_at(buf_pos))
            logits = jax.lax.dynamic_slice_in_dim(full, slot, 1, axis=1)
        tok, new_done = next_token(step, logits, done, rng)
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], step, axis=1)
        n_gen = n_gen + (~done).astype(jnp.int32)
        return step + 1, carried, tok, new_done, out, n_gen

    steps, _, _, _, out, n_gen = jax.lax.while_loop(
        cond_fn, body_fn, (jnp.int32(1), carry_model, tok, done, out, n_gen))
    return out, n_gen, steps
