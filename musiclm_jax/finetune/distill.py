"""Classifier-free-guidance distillation of the semantic stage LM (issue 18): a student decoded *without* guidance is
trained to match the guided teacher's next-token distributions, so generation runs one batch instead of the guided
pair (conditional + unconditional rows) in that stage.

    data:  for each prompt, the teacher (the semantic stage LM of a MusicLM directory) samples one window of semantic
           tokens with guidance, and the guided distribution at every target position,
           softmax(mask(u + s (c - u))) as `lm/decoding.py` samples from it, is stored beside the tokens
           (`make_distill_set` -> npz: inputs, targets, teacher_logprobs).
    train: `GuidanceDistillation` (the TokenLM family with a KL loss, sum_t KL(p_teacher || p_student)), warm-started
           from the teacher (`train(init_from=...)`), through the shared trainer.
    out:   a complete `MusicLM.from_pretrained` directory: the teacher's parts, the student as `stage_semantic`, and
           musiclm.json's `"unguided_stages": ["semantic"]` (the coarse stage keeps its guidance).

What it lacks (said in the README): the samples are the teacher's (offline), not the student's own as in the
follow-up paper's on-policy objective; no diversity reward; the coarse stage is not distilled (its windows are
conditioned on semantic tokens, which would have to be sampled first).
"""
from __future__ import annotations

import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.lm import stages as st
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.train.data import ResumableBatches, split_id

NEG_INF = -1e30
STAGE = "semantic"
STAGE_DIR = "stage_semantic"


def masked_log_softmax(logits: jax.Array, mask) -> jax.Array:
    """log_softmax of `logits` [b, T, V] restricted per target position t to `mask(t, ...)` (a StageMask)."""
    steps = jnp.arange(logits.shape[1])
    masked = jax.vmap(mask, in_axes=(0, 1), out_axes=1)(steps, logits)
    return jax.nn.log_softmax(masked.astype(jnp.float32), axis=-1)


def guided_logprobs(family: TokenLM, model, inputs, targets, uncond_inputs, scale: float, mask,
                    temperature: float = 1.0) -> jax.Array:
    """[b, T, V] log-probabilities the guided teacher samples target t from at `temperature` (teacher-forced on
    `targets`; guidance, then the mask, then the temperature, as `lm/decoding.py` samples)."""
    cond, _, _ = family._forward(model, {"inputs": inputs, "targets": targets}, deterministic=True)
    uncond, _, _ = family._forward(model, {"inputs": uncond_inputs, "targets": targets}, deterministic=True)
    cond, uncond = cond.astype(jnp.float32), uncond.astype(jnp.float32)
    return masked_log_softmax((uncond + scale * (cond - uncond)) / temperature, mask)


def kl_per_position(teacher_logprobs: jax.Array, student_logits: jax.Array) -> jax.Array:
    """KL(teacher || student) [b, T], over the ids the teacher can emit (the student's logits renormalised there)."""
    support = teacher_logprobs > NEG_INF / 2
    student = jax.nn.log_softmax(jnp.where(support, student_logits.astype(jnp.float32), NEG_INF), axis=-1)
    p = jnp.where(support, jnp.exp(teacher_logprobs), 0.0)
    return jnp.sum(p * (jnp.where(support, teacher_logprobs, 0.0) - jnp.where(support, student, 0.0)), axis=-1)


@gin.configurable
class GuidanceDistillation(TokenLM):
    """The token-LM family on batches {"inputs", "targets", "teacher_logprobs"}: loss = sum_t KL(teacher || student)
    per target position (`loss` and `kl` are per-token means), `accuracy` = the student's argmax agrees with the
    teacher's."""

    name = "guidance_distillation"

    def _kl_sums(self, models, batch):
        if "teacher_logprobs" not in batch:
            raise ValueError(f"a distillation batch needs 'teacher_logprobs' (make it with `musiclm-jax finetune "
                             f"distill-data`); got {sorted(batch)}")
        logits, _, _ = self._forward(models["model"], batch, deterministic=True)
        teacher = batch["teacher_logprobs"]
        kl = kl_per_position(teacher, logits)
        n = jnp.asarray(kl.size, jnp.float32)
        agree = jnp.sum(jnp.argmax(logits, -1) == jnp.argmax(teacher, -1))
        return jnp.sum(kl), n, {"loss": jnp.sum(kl), "kl": jnp.sum(kl), "accuracy": agree.astype(jnp.float32)}

    def loss(self, models, batch, rng):
        return self._kl_sums(models, batch)

    def eval(self, models, batch):
        _, weight, metrics = self._kl_sums(models, batch)
        return weight, metrics


# -- data ---------------------------------------------------------------------------------------------------------
def read_prompts(path: str) -> list[str]:
    """Captions from a prompts file: JSONL with a "prompt" (or "caption") per line, or plain text, one per line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path} not found: pass a JSONL of {{\"prompt\": ...}} lines or a text "
                                "file of one caption per line")
    prompts = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                row = json.loads(line)
                line = str(row.get("prompt") or row.get("caption") or "").strip()
            if line:
                prompts.append(line)
    if not prompts:
        raise ValueError(f"{path} holds no prompts: one caption per line, or JSONL lines with a \"prompt\"")
    return prompts


def make_distill_set(lm, prompts: list[str], *, seconds: float | None = None, guidance_scale: float | None = None,
                     temperature: float | None = None, batch_size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """The teacher's guided samples of one semantic window per prompt and its guided distributions along them.

    `lm`: a MusicLM (its semantic stage LM is the teacher); `seconds` defaults to the model's semantic window,
    guidance and temperature to its sampling settings. Returns {"inputs", "targets", "teacher_logprobs", ...}."""
    from musiclm_jax.lm import decoding

    scale = float(lm.sampling["guidance_scale"] if guidance_scale is None else guidance_scale)
    temperature = float(lm.sampling["temperatures"][0] if temperature is None else temperature)
    seconds = float(lm.windows.semantic_s if seconds is None else seconds)
    if scale == 1.0:
        raise ValueError("guidance_scale 1 has nothing to distil: pass the teacher's guidance (e.g. 3)")
    if not prompts:
        raise ValueError("no prompts to distil on")
    layout, model = lm.layouts[STAGE], lm.models[STAGE]
    from musiclm_jax.pipeline import guided_stages

    guide_tempo = STAGE in guided_stages(lm.sampling["guide_tempo"], "guide_tempo")
    guide_key = STAGE in guided_stages(lm.sampling["guide_key"])
    num_targets = max(1, int(round(seconds * lm.semantic_rate)))
    family = TokenLM(model.cfg, aligned=layout if model.cfg.aligned_inputs else None)
    mask = layout.logit_mask()
    graphdef, state = nnx.split(model)
    score = jax.jit(lambda s, i, t, u: guided_logprobs(family, nnx.merge(graphdef, s), i, t, u, scale, mask))
    out = {"inputs": [], "targets": [], "teacher_logprobs": []}
    key = jax.random.key(seed)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        pad = batch_size - len(chunk)  # one compiled shape: the last batch is padded with its first prompt
        padded = chunk + [chunk[0]] * pad
        inputs = np.asarray(layout.build_inputs(mulan=lm._text_tokens(padded), tempo=lm.prompt_tempo(padded),
                                                key=lm.prompt_key(padded) if layout.has_key else None), np.int32)
        # As the pipeline decodes: with guide_tempo / guide_key the unconditional branch loses the tempo / key too.
        uncond = np.asarray(layout.uncond_inputs(inputs, drop_tempo=guide_tempo, drop_key=guide_key), np.int32)
        aligned = family.aligned_ids(inputs, num_targets)
        uncond_aligned = family.aligned_ids(uncond, num_targets) if guide_tempo and layout.has_beat else None
        targets, _ = decoding.sample(model, jnp.asarray(inputs), max_new_tokens=num_targets,
                                     aligned=None if aligned is None else jnp.asarray(aligned),
                                     uncond_aligned=None if uncond_aligned is None else jnp.asarray(uncond_aligned),
                                     rng=jax.random.fold_in(key, start), temperature=temperature,
                                     logit_mask_fn=mask, guidance_scale=scale, uncond_prompts=jnp.asarray(uncond),
                                     prefix_len=inputs.shape[1])
        targets = np.asarray(targets, np.int32)
        logprobs = np.asarray(score(state, jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(uncond)))
        keep = slice(0, len(chunk))
        for name, value in (("inputs", inputs), ("targets", targets), ("teacher_logprobs", logprobs)):
            out[name].append(value[keep])
    data = {k: np.concatenate(v) for k, v in out.items()}
    data.update(prompts=np.asarray(prompts), guidance_scale=np.float32(scale), temperature=np.float32(temperature))
    return data


def load_distill_set(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"distillation set {path} not found: make it with `musiclm-jax finetune distill-data`")
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    missing = {"inputs", "targets", "teacher_logprobs"} - set(data)
    if missing:
        raise ValueError(f"{path} is not a distillation set (lacks {sorted(missing)}): make it with "
                         "`musiclm-jax finetune distill-data`")
    return data


class DistillBatches(ResumableBatches):
    """Batches of a distillation set's rows: train = all but the last `eval_rows`, eval = those; batch n is a slice
    of the permutation of epoch n // batches_per_epoch (seeded), so it is resumable by position."""

    def __init__(self, data: dict, *, split: str, batch_size: int, seed: int = 0, eval_rows: int = 0,
                 shard_index: int = 0, num_shards: int = 1):
        n = len(data["targets"])
        rows = np.arange(n - eval_rows) if split == "train" else np.arange(n - eval_rows, n)
        rows = rows[shard_index::num_shards]
        if len(rows) < batch_size:
            raise ValueError(f"the distillation set has {len(rows)} {split} rows for this host, fewer than the batch "
                             f"size {batch_size}: use more prompts or a smaller batch")
        self.data, self.rows, self.batch_size = data, rows, batch_size
        self.seed = (seed, split_id(split), shard_index)

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        per_epoch = len(self.rows) // self.batch_size
        epoch, i = divmod(position, per_epoch)
        order = np.random.default_rng([*self.seed, epoch]).permutation(self.rows)
        pick = np.sort(order[i * self.batch_size:(i + 1) * self.batch_size])
        return {k: self.data[k][pick] for k in ("inputs", "targets", "teacher_logprobs")}


def held_out_kl(family: GuidanceDistillation, model, data: dict, rows: np.ndarray, batch_size: int = 16) -> dict:
    """Mean KL(guided teacher || `model` decoded without guidance) per token and argmax agreement on `rows`."""
    graphdef, state = nnx.split(model)
    sums = jax.jit(lambda s, b: family._kl_sums({"model": nnx.merge(graphdef, s)}, b))
    kl = n = agree = 0.0
    for start in range(0, len(rows), batch_size):
        pick = rows[start:start + batch_size]
        total, count, metrics = sums(state, {k: jnp.asarray(data[k][pick])
                                             for k in ("inputs", "targets", "teacher_logprobs")})
        kl, n, agree = kl + float(total), n + float(count), agree + float(metrics["accuracy"])
    return {"kl": kl / n, "agreement": agree / n, "rows": int(len(rows))}


def write_finetuned(model_dir: str, train_dir: str, musiclm_dir: str) -> str:
    """A complete MusicLM directory: the base's (`model_dir`) parts with the latest checkpoint of `train_dir` as its
    semantic stage, decoded unguided (musiclm.json "unguided_stages"); its checkpoint records its architecture."""
    from musiclm_jax.train.checkpoints import export_inference

    if os.path.exists(musiclm_dir):
        shutil.rmtree(musiclm_dir)
    shutil.copytree(model_dir, musiclm_dir, ignore=shutil.ignore_patterns(STAGE_DIR, "eval"))
    export_inference(train_dir, os.path.join(musiclm_dir, STAGE_DIR), extra_files=[])
    with open(os.path.join(model_dir, "musiclm.json")) as f:
        manifest = json.load(f)
    manifest["unguided_stages"] = [STAGE]
    with open(os.path.join(musiclm_dir, "musiclm.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return musiclm_dir


@gin.configurable(denylist=["model_dir", "data_path", "out_dir"])
def distill(model_dir: str, data_path: str, out_dir: str, *, steps: int = 300, batch_size: int = 16,
            learning_rate: float = 1e-4, eval_rows: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Trains the student into `out_dir/train` (resumable) and writes the distilled MusicLM to `out_dir/musiclm`.
    Returns {"summary", "musiclm", "report"}; report["held_out"]: KL to the guided teacher on the held-out rows of
    the unguided teacher (where the student starts) and of the unguided student."""
    from musiclm_jax.pipeline import load_stage_lm
    from musiclm_jax.train.optimizers import make_optimizer, make_schedule
    from musiclm_jax.train.trainer import train

    manifest_path = os.path.join(model_dir, "musiclm.json")
    if not os.path.exists(manifest_path):
        raise ValueError(f"{model_dir} is not an exported MusicLM (no musiclm.json): pass a directory like "
                         "weights/musiclm")
    data = load_distill_set(data_path)
    n = len(data["targets"])
    eval_rows = max(batch_size, n // 10) if eval_rows is None else eval_rows
    if n - eval_rows < batch_size:
        raise ValueError(f"{data_path} has {n} rows: too few for {eval_rows} held out and a batch of {batch_size} "
                         "(make it from more prompts)")
    teacher_dir = os.path.join(model_dir, STAGE_DIR)
    teacher = load_stage_lm(teacher_dir)
    with open(manifest_path) as f:
        sizes = st.TokenSizes(**json.load(f)["sizes"])
    family = GuidanceDistillation(teacher.cfg, aligned=st.StageLayout(STAGE, sizes) if teacher.cfg.aligned_inputs
                                  else None)
    if data["teacher_logprobs"].shape[-1] != teacher.cfg.vocab_size:
        raise ValueError(f"{data_path} was made with another model (vocabulary {data['teacher_logprobs'].shape[-1]} "
                         f"vs {teacher.cfg.vocab_size}): remake it from {model_dir}")

    def dataset(split, batch_size, seed, shard_index=0, num_shards=1):
        return DistillBatches(data, split="train" if split == "train" else "eval", batch_size=batch_size, seed=seed,
                              eval_rows=eval_rows, shard_index=shard_index, num_shards=num_shards)

    schedule = make_schedule(learning_rate, "cosine", warmup_steps=min(20, steps // 4), total_steps=steps)
    train_dir = os.path.join(out_dir, "train")
    summary = train(family, model_dir=train_dir, dataset=dataset, eval_dataset=dataset, batch_size=batch_size,
                    num_steps=steps, eval_period=steps, eval_steps=max(1, eval_rows // batch_size),
                    checkpoint_period=steps, log_period=10, seed=seed, progress=progress,
                    optimizer=lambda: make_optimizer("adamw", schedule=schedule), init_from=teacher_dir)
    summary.pop("state", None)
    musiclm_dir = write_finetuned(model_dir, train_dir, os.path.join(out_dir, "musiclm"))
    held_out = np.arange(n - eval_rows, n)
    student = load_stage_lm(os.path.join(musiclm_dir, STAGE_DIR))
    report = {"teacher": model_dir, "data": data_path, "rows": n, "eval_rows": eval_rows, "steps": steps,
              "guidance_scale": float(data.get("guidance_scale", np.nan)),
              "held_out": {"teacher_unguided": held_out_kl(family, teacher, data, held_out, batch_size),
                           "student_unguided": held_out_kl(family, student, data, held_out, batch_size)},
              "summary": summary}
    with open(os.path.join(musiclm_dir, "distill.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    return {"summary": summary, "musiclm": musiclm_dir, "report": report}
