"""`musiclm-jax finetune ...`: guidance distillation (`finetune/distill.py`) and RL finetuning with rewards
(`finetune/rl.py`) of a trained MusicLM's semantic stage, and the rewards themselves (`finetune/rewards.py`).

  musiclm-jax finetune distill-data --model_dir weights/musiclm --prompts train_prompts.jsonl --out distill.npz
  musiclm-jax finetune distill --model_dir weights/musiclm --data distill.npz --out_dir out/distill --steps 300
  musiclm-jax generate --prompt "a calm piano waltz" --model_dir out/distill/musiclm   # semantic stage unguided
  musiclm-jax finetune rl --model_dir weights/musiclm --prompts train_prompts.jsonl --out_dir out/rl --rewards key
  musiclm-jax finetune compare --models base=weights/musiclm:unguided rl=out/rl/musiclm --prompts test_prompts.txt \
      --out out/rl/compare.json
  musiclm-jax finetune score --audio_dir out/gen --rewards tempo key pulse mulan --mulan_dir weights/musiclm/mulan
  musiclm-jax finetune curve --a out/distill/musiclm --b out/rl/musiclm --prompts test_prompts.txt --out_dir out/curve
"""
from __future__ import annotations

import argparse
import json
import os


# Hyper-parameter flags of the finetune trainings: shorthands for gin bindings of `distill` / `finetune_rl`, whose
# defaults live in the gin files (what the run's operative config then records).
DISTILL_GIN, RL_GIN = "finetune/distill_semantic.gin", "finetune/rl_semantic.gin"
DISTILL_FLAGS = {"steps": int, "batch_size": int, "learning_rate": float, "seed": int}
RL_FLAGS = {"rounds": int, "prompts_per_round": int, "samples_per_prompt": int, "steps_per_round": int,
            "batch_size": int, "learning_rate": float, "kl_weight": float, "reward_weight": float,
            "distill_weight": float, "teacher_guidance": float, "seed": int,
            "seconds": float}   # seconds: the semantic window sampled and scored (default: the model's)


def _hyper_parameters(parser, configurable: str, flags: dict) -> None:
    for name, kind in flags.items():
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help=f"= --gin.{configurable}.{name}=VALUE (default: the gin file's)")


def _bindings(args: argparse.Namespace, configurable: str, flags: dict) -> list[str]:
    """The gin bindings of the command: --gin_bindings / --gin.K=V, then the hyper-parameter flags given."""
    return list(args.gin_bindings) + [f"{configurable}.{name} = {getattr(args, name)!r}" for name in flags
                                      if getattr(args, name) is not None]


def register(subparsers) -> None:
    from musiclm_jax.train.gin_utils import add_gin_arguments

    f = subparsers.add_parser("finetune", help="finetune a trained MusicLM (guidance distillation, RL with rewards)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = f.add_subparsers(dest="finetune_command", required=True, metavar="STEP")
    d = sub.add_parser("distill-data", help="the teacher's guided samples and distributions for a prompts file")
    d.add_argument("--model_dir", required=True, help="the teacher: an exported MusicLM (e.g. weights/musiclm)")
    d.add_argument("--prompts", required=True, help="JSONL with a \"prompt\" per line, or one caption per line "
                                                    "(keep them apart from the evaluation prompts)")
    d.add_argument("--out", required=True, help="output .npz")
    d.add_argument("--guidance_scale", type=float, default=None, help="teacher guidance (default: the model's own)")
    d.add_argument("--seconds", type=float, default=None, help="semantic window length (default: the model's)")
    d.add_argument("--samples_per_prompt", type=int, default=1)
    d.add_argument("--batch_size", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=distill_data)
    t = sub.add_parser("distill", help="train a student semantic stage without guidance; write the distilled MusicLM")
    t.add_argument("--model_dir", required=True, help="the teacher MusicLM the data was made with")
    t.add_argument("--data", required=True, help="the .npz of `finetune distill-data`")
    t.add_argument("--out_dir", required=True, help="training dir (OUT/train, resumable) and the result (OUT/musiclm)")
    _hyper_parameters(t, "distill", DISTILL_FLAGS)
    t.add_argument("--no_progress", action="store_true")
    add_gin_arguments(t, f"gin file (repeatable; default {DISTILL_GIN})")
    t.set_defaults(func=distill_train)
    q = sub.add_parser("rl", help="RL-finetune the semantic stage with rewards on the audio it leads to")
    q.add_argument("--model_dir", required=True, help="the base: an exported MusicLM (e.g. weights/musiclm)")
    q.add_argument("--prompts", required=True, help="JSONL with a \"prompt\" per line, or one caption per line "
                                                    "(keep them apart from the evaluation prompts)")
    q.add_argument("--out_dir", required=True, help="training dir (OUT/train, resumable), rollouts, the result "
                                                    "(OUT/musiclm)")
    q.add_argument("--rewards", nargs="+", default=["key"], choices=("tempo", "key", "pulse", "mulan", "diversity"),
                   help="rewards to add up (mulan: the base's own MuLan; diversity: minus the MuLan-audio cosine "
                   "between a prompt's samples)")
    q.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per reward (default 1 each)")
    _hyper_parameters(q, "finetune_rl", RL_FLAGS)
    add_gin_arguments(q, f"gin file (repeatable; default {RL_GIN})")
    q.set_defaults(func=rl_train)
    c = sub.add_parser("compare", help="held-out rewards and diversity of several MusicLMs, paired with the first")
    c.add_argument("--models", nargs="+", required=True, help="NAME=DIR or NAME=DIR:unguided (the semantic stage "
                                                               "decoded without guidance); the first is the reference")
    c.add_argument("--prompts", required=True, help="held-out prompts: JSONL with a \"prompt\" per line, or one "
                                                    "caption per line")
    c.add_argument("--out", required=True, help="output JSON (means, paired differences, per-prompt scores)")
    c.add_argument("--rewards", nargs="+", default=["key", "tempo", "pulse", "mulan"],
                   choices=("tempo", "key", "pulse", "mulan"))
    c.add_argument("--seconds", type=float, default=8.0)
    c.add_argument("--samples_per_prompt", type=int, default=2)
    c.add_argument("--batch_size", type=int, default=16)
    c.set_defaults(func=compare_models)
    v = sub.add_parser("curve", help="the quality-diversity curve of merging two finetunings at several lam, with a "
                       "Pareto-front PNG")
    v.add_argument("--a", required=True, help="an exported MusicLM (lam 0)")
    v.add_argument("--b", required=True, help="another finetuning of the same base (lam 1)")
    v.add_argument("--lams", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    v.add_argument("--prompts", required=True, help="held-out prompts: JSONL with a \"prompt\" per line, or one "
                                                    "caption per line")
    v.add_argument("--out_dir", required=True, help="the merges (OUT/lam_<lam>), curve.json, curve.png")
    v.add_argument("--models", nargs="*", default=[], help="other models on the same axes: NAME=DIR[:unguided]")
    v.add_argument("--unguided", action="store_true", help="decode the merges' semantic stage without guidance")
    v.add_argument("--quality", default="mulan", choices=("tempo", "key", "pulse", "mulan"), help="the y axis")
    v.add_argument("--rewards", nargs="+", default=["mulan"], choices=("tempo", "key", "pulse", "mulan"),
                   help="rewards measured (the quality one included)")
    v.add_argument("--seconds", type=float, default=8.0)
    v.add_argument("--samples_per_prompt", type=int, default=2)
    v.add_argument("--batch_size", type=int, default=16)
    v.set_defaults(func=merge_curve)
    r = sub.add_parser("score", help="score generated audio with the finetuning rewards (finetune/rewards.py)")
    r.add_argument("--audio_dir", required=True, help="generated audio with its prompts.jsonl or infer results.jsonl")
    r.add_argument("--prompts", default=None, help="prompts file (default: the folder's)")
    r.add_argument("--rewards", nargs="+", default=["tempo", "key", "pulse"], choices=sorted(REWARDS),
                   help="which rewards (mulan needs --mulan_dir)")
    r.add_argument("--mulan_dir", default=None)
    r.add_argument("--out", default=None, help="JSONL of per-item scores (default AUDIO_DIR/rewards.jsonl)")
    r.set_defaults(func=score)


REWARDS = ("tempo", "key", "pulse", "mulan", "diversity")


def score(args: argparse.Namespace) -> dict:
    import numpy as np

    from musiclm_jax.eval.commands import _prompts_in
    from musiclm_jax.eval.data import load_items
    from musiclm_jax.finetune import rewards as rw

    if ("mulan" in args.rewards or "diversity" in args.rewards) and not args.mulan_dir:
        raise ValueError("the mulan and diversity rewards need --mulan_dir (e.g. weights/musiclm/mulan)")
    items, skipped = load_items(args.prompts or _prompts_in(args.audio_dir, "--audio_dir"), args.audio_dir)
    if not items:
        raise ValueError(f"no readable audio in {args.audio_dir} ({len(skipped)} skipped: {skipped.to_json()})")
    mulan = None
    if args.mulan_dir:
        from musiclm_jax.mulan.api import MuLan
        mulan = MuLan.from_checkpoint(args.mulan_dir)
    scores = {}
    for name in args.rewards:
        if name == "diversity":  # samples of one prompt: the rows sharing its text
            emb = np.stack([mulan.embed_audio(it.wave, it.sample_rate) for it in items])
            scores[name] = rw.diversity_reward(emb, [it.prompt for it in items])
            continue
        reward = _reward(name, mulan)
        values = [reward(it.wave[None], it.sample_rate, [it.prompt])[0] for it in items]  # each at its rate
        scores[name] = np.asarray(values, np.float32)
    out = args.out or os.path.join(args.audio_dir, "rewards.jsonl")
    with open(out, "w") as f:
        for i, it in enumerate(items):
            row = {"id": it.id, "prompt": it.prompt,
                   **{k: (None if np.isnan(v[i]) else round(float(v[i]), 4)) for k, v in scores.items()}}
            f.write(json.dumps(row) + "\n")
    means = {k: (None if np.isnan(v).all() else round(float(np.nanmean(v)), 4)) for k, v in scores.items()}
    summary = {"items": len(items), "skipped": skipped.to_json(), "mean": means, "out": out}
    print(json.dumps(summary))
    return summary


def distill_data(args: argparse.Namespace) -> dict:
    import numpy as np

    from musiclm_jax.finetune.distill import make_distill_set, read_prompts
    from musiclm_jax.pipeline import MusicLM

    if args.samples_per_prompt < 1 or args.batch_size < 1:
        raise ValueError("--samples_per_prompt and --batch_size must be >= 1")
    # prompt-major (p0, p0, p1, p1, ...): the held-out rows at the end are whole prompts the student never saw
    prompts = [p for p in read_prompts(args.prompts) for _ in range(args.samples_per_prompt)]
    lm = MusicLM.from_pretrained(args.model_dir, load_semantic_tokenizer=False)
    data = make_distill_set(lm, prompts, seconds=args.seconds, guidance_scale=args.guidance_scale,
                            batch_size=args.batch_size, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **data)
    summary = {"out": args.out, "rows": int(len(data["targets"])), "tokens_per_row": int(data["targets"].shape[1]),
               "guidance_scale": float(data["guidance_scale"])}
    print(json.dumps(summary))
    return summary


def _launch(run, gin_files, bindings, search_paths, module: str) -> dict:
    """A finetuning through the one launch path; the gin config is cleared after it (bindings such as a shortened
    --steps must not reach a later call in the same process)."""
    import gin

    from musiclm_jax.train.launch import launch

    try:
        return launch(run, gin_files, bindings, search_paths, registrations=(module,))
    finally:
        gin.clear_config()


def distill_train(args: argparse.Namespace) -> dict:
    def run() -> dict:
        from musiclm_jax.finetune.distill import distill
        return distill(args.model_dir, args.data, args.out_dir)

    bindings = _bindings(args, "distill", DISTILL_FLAGS) + (["distill.progress = False"] if args.no_progress else [])
    result = _launch(run, args.gin_file or [DISTILL_GIN], bindings, args.gin_search_path,
                     "musiclm_jax.finetune.distill")
    s = result["summary"]
    print(json.dumps({"musiclm": result["musiclm"], "step": s.get("step"), "held_out": result["report"]["held_out"]}))
    return result


def _reward(name: str, mulan=None):
    """A per-clip reward of finetune/rewards.py by name (the one mapping of score, rl and compare); "mulan" needs
    the MuLan that scores it."""
    from musiclm_jax.finetune import rewards as rw

    if name in ("mulan", "diversity"):
        if mulan is None:
            raise ValueError(f"the {name} reward needs a MuLan (--mulan_dir, or the model's own mulan/)")
        return rw.MuLanReward(mulan) if name == "mulan" else rw.DiversityReward(mulan)
    return {"tempo": rw.TempoReward, "key": rw.KeyReward, "pulse": rw.PulseReward}[name]()


def compare_models(args: argparse.Namespace) -> dict:
    from musiclm_jax.finetune import compare as cmp
    from musiclm_jax.finetune.distill import read_prompts
    from musiclm_jax.mulan.api import MuLan

    _, first_dir, _ = cmp.parse_model(args.models[0])
    if not os.path.isdir(os.path.join(first_dir, "mulan")):
        raise ValueError(f"{first_dir} has no mulan/: the first model must be a complete MusicLM directory")
    mulan = MuLan.from_checkpoint(os.path.join(first_dir, "mulan"))   # one base: one MuLan for all
    rewards = {name: _reward(name, mulan) for name in args.rewards}
    result = cmp.compare(args.models, read_prompts(args.prompts), rewards, mulan, seconds=args.seconds,
                         samples_per_prompt=args.samples_per_prompt, batch_size=args.batch_size)
    cmp.write(result, args.out)
    print("\n".join(cmp.summary_lines(result)))
    print(f"wrote {args.out}")
    return result


def merge_curve(args: argparse.Namespace) -> dict:
    from musiclm_jax.finetune import curve
    from musiclm_jax.finetune.distill import read_prompts
    from musiclm_jax.mulan.api import MuLan

    if not os.path.isdir(os.path.join(args.a, "mulan")):
        raise ValueError(f"{args.a} has no mulan/: --a must be a complete MusicLM directory")
    mulan = MuLan.from_checkpoint(os.path.join(args.a, "mulan"))   # one base: its MuLan scores every model
    rewards = {name: _reward(name, mulan) for name in dict.fromkeys([*args.rewards, args.quality])}
    result = curve.merge_curve(args.a, args.b, args.lams, read_prompts(args.prompts), rewards, mulan, args.out_dir,
                               quality=args.quality, unguided=args.unguided, models=args.models,
                               seconds=args.seconds, samples_per_prompt=args.samples_per_prompt,
                               batch_size=args.batch_size)
    for name, p in result["points"].items():
        print(f"{name}: diversity {p['diversity']:.4f}, {args.quality} {p[args.quality]:.4f}")
    print(f"pareto front: {', '.join(result['pareto_front'])}; merges monotone: {result['monotone']}; "
          f"wrote {args.out_dir}/curve.json, {result['png']}")
    return result


def rl_train(args: argparse.Namespace) -> dict:
    from musiclm_jax.finetune import rewards as rw
    from musiclm_jax.finetune.distill import read_prompts
    from musiclm_jax.finetune.rl import finetune_rl

    weights = args.weights or [1.0] * len(args.rewards)
    if len(weights) != len(args.rewards):
        raise ValueError(f"--weights gives {len(weights)} weights for {len(args.rewards)} rewards: one each")
    prompts = read_prompts(args.prompts)
    mulan = None
    if {"mulan", "diversity"} & set(args.rewards):   # the base's own MuLan scores them
        from musiclm_jax.mulan.api import MuLan
        mulan = MuLan.from_checkpoint(os.path.join(args.model_dir, "mulan"))
    total = rw.weighted({name: (w, _reward(name, mulan)) for name, w in zip(args.rewards, weights)})
    result = _launch(lambda: finetune_rl(args.model_dir, prompts, args.out_dir, reward=lambda *a: total(*a)[0]),
                     args.gin_file or [RL_GIN], _bindings(args, "finetune_rl", RL_FLAGS), args.gin_search_path,
                     "musiclm_jax.finetune.rl")
    rounds = result["report"]["rounds"]
    print(json.dumps({"musiclm": result["musiclm"], "mean_reward_by_round": [round(r["mean_reward"], 4)
                                                                             for r in rounds]}))
    return result
