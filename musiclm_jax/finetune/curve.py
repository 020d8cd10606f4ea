"""The quality-diversity curve of model merging (issue 18; the MusicLM follow-ups' weight interpolation): two
finetunings of one base merged at several lam (`export.merge`), each generated on held-out prompts and scored by
`compare.compare` (paired with the first lam), beside any other models to place on the same axes (the base with and
without guidance, a distilled model, ...). Quality is one reward (default the MuLan text-audio score), diversity is
minus the mean MuLan-audio cosine between a prompt's samples. Writes `curve.json` (the comparison, each model's
point, the Pareto front and whether the merges trace a monotone trade-off) and `curve.png`.

    musiclm-jax finetune curve --a out/distill/musiclm --b out/rl/musiclm --lams 0 0.25 0.5 0.75 1 \
        --prompts test_prompts.txt --out_dir out/curve --models base=weights/musiclm
"""
from __future__ import annotations

import json
import os
from typing import Sequence


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats on both axes (x and y both higher is better), by x."""
    front = [n for n, (x, y) in points.items()
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points.values())]
    return sorted(front, key=lambda n: points[n][0])


def monotone(values: Sequence[tuple[float, float]]) -> bool:
    """Whether a path of (x, y) points trades one axis for the other all the way: x never falls while y never
    rises, or the reverse."""
    xs, ys = [v[0] for v in values], [v[1] for v in values]
    up = lambda s: all(b >= a for a, b in zip(s, s[1:]))    # noqa: E731
    down = lambda s: all(b <= a for a, b in zip(s, s[1:]))  # noqa: E731
    return (up(xs) and down(ys)) or (down(xs) and up(ys))


def merge_curve(a_dir: str, b_dir: str, lams: Sequence[float], prompts: Sequence[str], rewards: dict, mulan,
                out_dir: str, *, quality: str = "mulan", unguided: bool = False, models: Sequence[str] = (),
                seconds: float = 8.0, samples_per_prompt: int = 2, batch_size: int = 16) -> dict:
    """Merges (kept in `out_dir/lam_<lam>`, reused when already there), compares, writes curve.json / curve.png."""
    from musiclm_jax.export import merge
    from musiclm_jax.finetune import compare as cmp

    lams = sorted(float(v) for v in lams)
    if len(lams) < 2 or len(set(lams)) != len(lams):
        raise ValueError(f"--lams needs at least two different values in [0, 1], got {lams}")
    if quality not in rewards:
        raise ValueError(f"--quality {quality!r} must be one of the rewards measured: {sorted(rewards)}")
    specs = []
    for lam in lams:
        d = os.path.join(out_dir, f"lam_{lam:g}")
        if not os.path.exists(os.path.join(d, "merge.json")):
            merge(a_dir, b_dir, lam, d)
        specs.append(f"lam{lam:g}={d}" + (":unguided" if unguided else ""))
    result = cmp.compare([*specs, *models], prompts, rewards, mulan, seconds=seconds,
                         samples_per_prompt=samples_per_prompt, batch_size=batch_size)
    points = {name: (res["diversity"]["mean"], res[quality]["mean"]) for name, res in result["models"].items()}
    merged = [cmp.parse_model(s)[0] for s in specs]
    curve = {"a": a_dir, "b": b_dir, "lams": lams, "quality": quality, "unguided": unguided,
             "points": {n: {"diversity": p[0], quality: p[1]} for n, p in points.items()},
             "pareto_front": pareto_front(points), "monotone": monotone([points[n] for n in merged]),
             "comparison": result}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "curve.json"), "w") as f:
        json.dump(curve, f, indent=1)
    curve["png"] = plot(points, merged, curve["pareto_front"], quality, os.path.join(out_dir, "curve.png"))
    return curve


def plot(points: dict[str, tuple[float, float]], merged: Sequence[str], front: Sequence[str], quality: str,
         path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([points[n][0] for n in merged], [points[n][1] for n in merged], "-o", color="tab:blue",
            label="merges (lam in order)")
    others = [n for n in points if n not in merged]
    if others:
        ax.plot([points[n][0] for n in others], [points[n][1] for n in others], "s", color="tab:orange",
                label="other models")
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="gray", label="Pareto front")
    for n, (x, y) in points.items():
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("diversity (- mean MuLan cosine between a prompt's samples)")
    ax.set_ylabel(f"quality ({quality} reward)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
