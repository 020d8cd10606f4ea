"""RL finetuning of the semantic stage LM with sequence-level rewards (issue 18; MusicRL's recipe at our scale).

    round r: the current policy (the semantic stage, decoded *without* guidance at its sampling temperature, so the
             distribution sampled from is the one being optimised) samples `samples_per_prompt` windows for each of
             the round's prompts; `score` turns each window into a reward (for music: the MusicLM's own coarse and
             fine stages and codec make audio of it, unchanged, and a reward of `finetune/rewards.py` scores the
             audio against its prompt). Advantage = reward - the mean of the same prompt's other samples (RLOO
             baseline), divided by the round's reward spread. The frozen base's log-probabilities along each sample
             are stored beside it (`rollout` -> out_dir/rollouts/round_<r>.npz, kept: they are the reward curve).
    train:   `PolicyGradient` (the TokenLM family) on the round's rows, `steps_per_round` steps through the shared
             trainer (the same out_dir/train, resumed round after round):
                 per token   -A * log pi(a_t)  +  kl_weight * KL(pi || base)_t
             (the exact KL over the stage's ids at every sampled position, not a one-sample estimate).
    out:     a complete MusicLM directory: the base's parts, the finetuned semantic stage, and musiclm.json's
             `"unguided_stages": ["semantic"]` (it was trained to be sampled unguided; the coarse stage keeps its
             guidance).

With `distill_weight` > 0 the rollouts also store the *guided* base's log-probabilities along the policy's own
samples, and the loss adds distill_weight * KL(guided base || pi) per token: on-policy guidance distillation. With
the diversity reward (`rewards.DiversityReward`) and kl_weight 0 this is diversity-rewarded CFG distillation, the
follow-up's objective (gin/finetune/distill_diversity_semantic.gin); `finetune/distill.py` is the offline variant
on the teacher's own samples.

Only the semantic stage is finetuned: the reward reaches it through audio made by the fixed later stages, so what it
can learn is bounded by what those stages keep of it (the stage-by-stage diagnosis of issue 16 says how much).
A job is resumable: finished rounds (their rollout file and trainer steps) are skipped.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musiclm_jax.finetune.distill import (NEG_INF, STAGE, STAGE_DIR, guided_logprobs, kl_per_position,
                                         masked_log_softmax, write_finetuned)
from musiclm_jax.lm.models import TokenLM
from musiclm_jax.musical_key import key_from_text
from musiclm_jax.train.data import ResumableBatches

log = logging.getLogger(__name__)
ROW_KEYS = ("inputs", "targets", "advantages", "ref_logprobs")

# score(targets [n, T] stage ids, prompts [n]) -> rewards [n] float (nan: nothing to say; counts as the mean)
Scorer = Callable[[np.ndarray, Sequence[str]], np.ndarray]


@gin.configurable
class PolicyGradient(TokenLM):
    """The token-LM family on rollout batches {"inputs", "targets", "advantages" [b], "ref_logprobs" [b, T, V]}
    (+ "teacher_logprobs" [b, T, V] when `distill_weight` > 0). Per token:

        reward_weight * (-A log pi(a_t))  +  kl_weight * KL(pi || ref)_t  +  distill_weight * KL(teacher || pi)_t

    The last term is on-policy guidance distillation (the guided base's distribution along the policy's own
    samples); with the diversity reward it is the CFG-distillation follow-up's objective (quality by distillation,
    `reward_weight` = its beta). Metrics: `kl` (to ref, per token), `distill_kl`, `pg`, `logprob` (mean log pi of
    the sampled tokens). `temperature`: the one the rollouts were sampled at."""

    name = "policy_gradient"

    def __init__(self, config, kl_weight: float = 0.05, temperature: float = 1.0, reward_weight: float = 1.0,
                 distill_weight: float = 0.0, **kwargs):
        super().__init__(config, **kwargs)
        if min(kl_weight, reward_weight, distill_weight) < 0 or temperature <= 0:
            raise ValueError(f"PolicyGradient needs kl_weight, reward_weight, distill_weight >= 0 and temperature "
                             f"> 0, got {kl_weight}, {reward_weight}, {distill_weight}, {temperature}")
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)
        self.reward_weight, self.distill_weight = float(reward_weight), float(distill_weight)

    def row_keys(self) -> tuple[str, ...]:
        return ROW_KEYS + (("teacher_logprobs",) if self.distill_weight else ())

    def _sums(self, models, batch):
        missing = set(self.row_keys()) - set(batch)
        if missing:
            raise ValueError(f"a policy-gradient batch needs {sorted(missing)} (rollouts of `finetune rl`); got "
                             f"{sorted(batch)}")
        logits, targets, _ = self._forward(models["model"], batch, deterministic=True)
        ref = batch["ref_logprobs"]
        support = ref > NEG_INF / 2   # the ids the stage can emit at each position
        logp = jax.nn.log_softmax(jnp.where(support, logits.astype(jnp.float32) / self.temperature, NEG_INF), -1)
        taken = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]            # [b, T]
        pg = -batch["advantages"][:, None] * taken
        p = jnp.where(support, jnp.exp(logp), 0.0)
        kl = jnp.sum(p * (jnp.where(support, logp, 0.0) - jnp.where(support, ref, 0.0)), axis=-1)
        per_token = self.reward_weight * pg + self.kl_weight * kl
        metrics = {"kl": jnp.sum(kl), "pg": jnp.sum(pg), "logprob": jnp.sum(taken)}
        if self.distill_weight:
            distill = kl_per_position(batch["teacher_logprobs"], logits.astype(jnp.float32) / self.temperature)
            per_token = per_token + self.distill_weight * distill
            metrics["distill_kl"] = jnp.sum(distill)
        total = jnp.sum(per_token)
        n = jnp.asarray(kl.size, jnp.float32)
        return total, n, {"loss": total, **metrics}

    def loss(self, models, batch, rng):
        return self._sums(models, batch)

    def eval(self, models, batch):
        _, weight, metrics = self._sums(models, batch)
        return weight, metrics


def rloo_advantages(rewards: np.ndarray, samples_per_prompt: int, normalize: bool = True) -> np.ndarray:
    """Prompt-major rewards [n] (samples of prompt i are rows i*K .. i*K+K-1) -> reward minus the mean of the
    prompt's other samples; nan rewards count as the prompt's mean (advantage 0). `normalize`: / the std of the
    advantages (so kl_weight and the learning rate mean the same whatever the reward's scale)."""
    k = samples_per_prompt
    r = np.asarray(rewards, np.float64).reshape(-1, k)
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (the baseline is the prompt's other samples)")
    fill = np.nanmean(np.where(np.isnan(r).all(1, keepdims=True), 0.0, r), axis=1, keepdims=True)
    r = np.where(np.isnan(r), fill, r)
    adv = r - (r.sum(1, keepdims=True) - r) / (k - 1)
    if normalize:
        adv = adv / max(float(adv.std()), 1e-6)
    return adv.reshape(-1).astype(np.float32)


def rollout(policy, reference, layout, mulan_tokens: np.ndarray, prompts: Sequence[str], score: Scorer, *,
            num_targets: int, samples_per_prompt: int, temperature: float, seed: int, batch_size: int = 16,
            normalize: bool = True, teacher_guidance: float | None = None,
            tempo: np.ndarray | None = None, guide_tempo: bool = False, stated_key: np.ndarray | None = None,
            guide_key: bool = False) -> dict[str, np.ndarray]:
    """One round's rows: `samples_per_prompt` samples of `num_targets` stage tokens per prompt from `policy` (no
    guidance), their rewards, RLOO advantages and the `reference` log-probs along them (prompt-major rows); with
    `teacher_guidance`, also the reference's *guided* log-probs along them ("teacher_logprobs", for on-policy
    distillation). `tempo` [n, 2]: each prompt's tempo conditioning (a tempo-conditioned stage; MusicLM.prompt_tempo);
    `guide_tempo`: the teacher's unconditional branch loses the tempo too (the model's sampling setting);
    `stated_key` [n], `guide_key`: the same for a key-conditioned stage (MusicLM.prompt_key)."""
    from musiclm_jax.lm import decoding

    if len(prompts) != len(mulan_tokens):
        raise ValueError(f"{len(prompts)} prompts for {len(mulan_tokens)} rows of MuLan tokens")
    mask = layout.logit_mask()
    family = TokenLM(reference.cfg, aligned=layout if reference.cfg.aligned_inputs else None)
    ref_graph, ref_state = nnx.split(reference)

    def ref_logprobs(state, inputs, targets):
        logits, _, _ = family._forward(nnx.merge(ref_graph, state), {"inputs": inputs, "targets": targets},
                                       deterministic=True)
        return masked_log_softmax(logits.astype(jnp.float32) / temperature, mask)

    ref_fn = jax.jit(ref_logprobs)
    teacher_fn = None
    if teacher_guidance is not None:
        teacher_fn = jax.jit(lambda state, i, t, u: guided_logprobs(
            family, nnx.merge(ref_graph, state), i, t, u, float(teacher_guidance), mask, temperature))
    k = samples_per_prompt
    per_batch = max(1, batch_size // k)   # prompts per sampling call
    rows = {"inputs": [], "targets": [], "ref_logprobs": [], **({"teacher_logprobs": []} if teacher_fn else {})}
    key = jax.random.key(seed)
    for start in range(0, len(prompts), per_batch):
        chunk = np.asarray(mulan_tokens[start:start + per_batch], np.int32)
        pad = per_batch - len(chunk)   # one compiled shape: the last call is padded with its first prompt
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)])
        rows_tempo = None
        if tempo is not None:
            rows_tempo = np.asarray(tempo[start:start + per_batch], np.float32)
            rows_tempo = np.concatenate([rows_tempo, np.repeat(rows_tempo[:1], pad, 0)])
        rows_key = None
        if stated_key is not None and layout.has_key:
            rows_key = np.asarray(stated_key[start:start + per_batch], np.int64)
            rows_key = np.concatenate([rows_key, np.repeat(rows_key[:1], pad, 0)])
        inputs = np.asarray(layout.build_inputs(mulan=chunk, tempo=rows_tempo, key=rows_key), np.int32)
        aligned = family.aligned_ids(inputs, num_targets)
        targets, _ = decoding.sample(policy, jnp.asarray(inputs), max_new_tokens=num_targets,
                                     aligned=None if aligned is None else jnp.asarray(aligned),
                                     rng=jax.random.fold_in(key, start), temperature=temperature,
                                     logit_mask_fn=mask, num_samples=k, prefix_len=inputs.shape[1])
        keep = (len(chunk) - pad) * k
        inputs = np.repeat(inputs, k, axis=0)[:keep]
        targets = np.asarray(targets, np.int32)[:keep]
        rows["inputs"].append(inputs)
        rows["targets"].append(targets)
        rows["ref_logprobs"].append(np.asarray(ref_fn(ref_state, jnp.asarray(inputs), jnp.asarray(targets))))
        if teacher_fn is not None:
            uncond = np.asarray(layout.uncond_inputs(inputs, drop_tempo=guide_tempo, drop_key=guide_key), np.int32)
            rows["teacher_logprobs"].append(np.asarray(teacher_fn(ref_state, jnp.asarray(inputs),
                                                                  jnp.asarray(targets), jnp.asarray(uncond))))
    data = {name: np.concatenate(v) for name, v in rows.items()}
    row_prompts = [p for p in prompts for _ in range(k)]
    rewards = np.asarray(score(data["targets"], row_prompts), np.float32)
    if rewards.shape != (len(row_prompts),):
        raise ValueError(f"the scorer returned {rewards.shape} rewards for {len(row_prompts)} samples")
    data.update(rewards=rewards, advantages=rloo_advantages(rewards, k, normalize),
                prompts=np.asarray(row_prompts))
    return data


class RolloutBatches(ResumableBatches):
    """Batches of one round's rows (seeded permutation per epoch, resumable by position). The trainer's position
    keeps counting across rounds; `offset` (the round's first step) makes every round start at its epoch 0."""

    def __init__(self, data: dict, *, batch_size: int, seed: int = 0, offset: int = 0, shard_index: int = 0,
                 num_shards: int = 1):
        rows = np.arange(len(data["targets"]))[shard_index::num_shards]
        if len(rows) < batch_size:
            raise ValueError(f"a round has {len(rows)} rows for this host, fewer than the batch size {batch_size}: "
                             "use more prompts per round or a smaller batch")
        self.data, self.rows, self.batch_size, self.seed, self.offset = data, rows, batch_size, seed, offset

    def make_batch(self, position: int) -> dict[str, np.ndarray]:
        per_epoch = len(self.rows) // self.batch_size
        epoch, i = divmod(max(position - self.offset, 0), per_epoch)
        order = np.random.default_rng([self.seed, self.offset, epoch]).permutation(self.rows)
        pick = np.sort(order[i * self.batch_size:(i + 1) * self.batch_size])
        keys = ROW_KEYS + (("teacher_logprobs",) if "teacher_logprobs" in self.data else ())
        return {name: self.data[name][pick] for name in keys}


def audio_scorer(lm, reward: Callable, seconds: float, seed: int = 0, batch_size: int = 16) -> Scorer:
    """Scores sampled semantic windows by the audio the MusicLM's later stages make of them: coarse and fine from
    the given semantic tokens (the model's sampling settings), the codec, then `reward(waves, sr, prompts)` once
    on all of them (so a reward over a prompt's samples, such as diversity, sees the whole group)."""
    layout = lm.layouts[STAGE]

    def score(targets, prompts):
        codes = np.asarray(layout.targets_to_codes(np.asarray(targets)))
        waves = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            gen = lm.generate_from_tokens(lm._text_tokens(chunk), seconds, semantic=codes[start:start + len(chunk)],
                                          seed=seed + start, progress=False, rerank=False,
                                          **({"key": [key_from_text(p) for p in chunk]} if lm.has_key else {}))
            waves.append(gen.waves)
        return np.asarray(reward(np.concatenate(waves), lm.sample_rate, list(prompts)), np.float32)
    return score


@gin.configurable(denylist=["model_dir", "prompts", "out_dir", "score", "reward"])
def finetune_rl(model_dir: str, prompts: Sequence[str], out_dir: str, score: Scorer | None = None, *,
                reward: Callable | None = None, rounds: int = 8, prompts_per_round: int = 16,
                samples_per_prompt: int = 4, steps_per_round: int = 8, batch_size: int = 16,
                learning_rate: float = 1e-5, kl_weight: float = 0.05, reward_weight: float = 1.0,
                distill_weight: float = 0.0, teacher_guidance: float | None = None, seconds: float | None = None,
                seed: int = 0, progress: bool = False) -> dict:
    """RL-finetunes the semantic stage of the MusicLM in `model_dir` (see the module docstring); resumable.

    `score`: a Scorer on stage tokens (tests), or else `reward` (finetune/rewards.py) on the audio the model makes
    of them (`audio_scorer`). Each round takes the next `prompts_per_round` prompts (cycling). `distill_weight` > 0
    adds on-policy guidance distillation towards the base decoded with `teacher_guidance` (default: the model's
    guidance scale); with the diversity reward and kl_weight 0 that is diversity-rewarded CFG distillation
    (`PolicyGradient`). Writes out_dir/train (trainer), out_dir/rollouts/round_<r>.npz, out_dir/musiclm (the
    result) and its rl.json."""
    from musiclm_jax.pipeline import MusicLM, guided_stages, load_stage_lm
    from musiclm_jax.train.checkpoints import Checkpointer
    from musiclm_jax.train.optimizers import make_optimizer, make_schedule
    from musiclm_jax.train.trainer import train

    if not os.path.exists(os.path.join(model_dir, "musiclm.json")):
        raise ValueError(f"{model_dir} is not an exported MusicLM (no musiclm.json): pass a directory like "
                         "weights/musiclm")
    if (score is None) == (reward is None):
        raise ValueError("pass exactly one of score (on tokens) and reward (on audio)")
    if min(rounds, prompts_per_round, steps_per_round, batch_size) < 1 or samples_per_prompt < 2:
        raise ValueError("rounds, prompts_per_round, steps_per_round and batch_size must be >= 1 and "
                         "samples_per_prompt >= 2")
    if prompts_per_round * samples_per_prompt < batch_size:
        raise ValueError(f"a round makes {prompts_per_round * samples_per_prompt} samples, fewer than the batch "
                         f"size {batch_size}: raise --prompts_per_round or --samples_per_prompt")
    if batch_size % jax.device_count():
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {jax.device_count()} devices the batch "
                         "is split over")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to finetune on")
    lm = MusicLM.from_pretrained(model_dir, load_semantic_tokenizer=False)
    layout, base_dir = lm.layouts[STAGE], os.path.join(model_dir, STAGE_DIR)
    reference = lm.models[STAGE]
    temperature = float(lm.sampling["temperatures"][0]) or 1.0
    seconds = float(lm.windows.semantic_s if seconds is None else seconds)
    num_targets = max(1, int(round(seconds * lm.semantic_rate)))
    score = score or audio_scorer(lm, reward, seconds, seed=seed)
    family = PolicyGradient(reference.cfg, kl_weight=kl_weight, temperature=temperature, reward_weight=reward_weight,
                            distill_weight=distill_weight, aligned=layout if reference.cfg.aligned_inputs else None)
    if distill_weight:
        teacher_guidance = float(lm.sampling["guidance_scale"] if teacher_guidance is None else teacher_guidance)
        if teacher_guidance == 1.0:
            raise ValueError("distill_weight > 0 distils the guided base: teacher_guidance 1 has no guidance to "
                             "distil (pass e.g. 3, or a model whose musiclm.json guidance_scale is > 1)")
    else:
        teacher_guidance = None
    train_dir, rollout_dir = os.path.join(out_dir, "train"), os.path.join(out_dir, "rollouts")
    os.makedirs(rollout_dir, exist_ok=True)
    os.makedirs(train_dir, exist_ok=True)
    schedule = make_schedule(learning_rate, "constant", warmup_steps=min(10, steps_per_round))
    history, summary = [], {}
    for r in range(rounds):
        done = Checkpointer(train_dir).latest_step() or 0
        path = os.path.join(rollout_dir, f"round_{r}.npz")
        if done >= (r + 1) * steps_per_round and os.path.exists(path):
            with np.load(path) as f:
                history.append(_round_stats(r, f["rewards"]))
            continue
        policy = reference if done == 0 else load_stage_lm(train_dir)
        if os.path.exists(path):    # this round's rollouts were made before a stop: train on them
            with np.load(path) as f:
                data = {name: f[name] for name in f.files}
            if distill_weight and "teacher_logprobs" not in data:
                raise ValueError(f"{path} was made without the guided teacher (distill_weight was 0): use another "
                                 "out_dir for a distillation run")
        else:
            pick = [prompts[(r * prompts_per_round + i) % len(prompts)] for i in range(prompts_per_round)]
            data = rollout(policy, reference, layout, lm._text_tokens(pick), pick, score, num_targets=num_targets,
                           samples_per_prompt=samples_per_prompt, temperature=temperature, seed=seed + 1000 * r,
                           batch_size=batch_size, teacher_guidance=teacher_guidance, tempo=lm.prompt_tempo(pick),
                           guide_tempo=STAGE in guided_stages(lm.sampling["guide_tempo"], "guide_tempo"),
                           stated_key=lm.prompt_key(pick), guide_key=STAGE in guided_stages(lm.sampling["guide_key"]))
            np.savez_compressed(path, **data)
        history.append(_round_stats(r, data["rewards"]))
        log.info("rl round %d: mean reward %.4f", r, history[-1]["mean_reward"])

        def dataset(split, batch_size, seed, shard_index=0, num_shards=1, data=data, offset=r * steps_per_round):
            return RolloutBatches(data, batch_size=batch_size, seed=seed, offset=offset, shard_index=shard_index,
                                  num_shards=num_shards)

        summary = train(family, model_dir=train_dir, dataset=dataset, batch_size=batch_size,
                        num_steps=(r + 1) * steps_per_round, checkpoint_period=steps_per_round, log_period=1,
                        seed=seed, progress=progress,
                        optimizer=lambda: make_optimizer("adamw", schedule=schedule), init_from=base_dir)
        summary.pop("state", None)
    musiclm_dir = write_finetuned(model_dir, train_dir, os.path.join(out_dir, "musiclm"))
    report = {"base": model_dir, "rounds": history, "steps": rounds * steps_per_round, "kl_weight": kl_weight,
              "reward_weight": reward_weight, "distill_weight": distill_weight, "teacher_guidance": teacher_guidance,
              "learning_rate": learning_rate, "samples_per_prompt": samples_per_prompt,
              "prompts_per_round": prompts_per_round, "seconds": seconds, "last_metrics": summary.get("last_metrics")}
    with open(os.path.join(musiclm_dir, "rl.json"), "w") as f:
        json.dump(report, f, indent=1, default=float)
    return {"musiclm": musiclm_dir, "report": report}


def _round_stats(r: int, rewards: np.ndarray) -> dict:
    finite = rewards[np.isfinite(rewards)]
    return {"round": r, "mean_reward": float(finite.mean()) if finite.size else float("nan"),
            "scored": int(finite.size), "samples": int(rewards.size)}
