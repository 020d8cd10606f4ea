"""Evaluation report: results.json, report.md (systems as rows, metrics as columns), PNG bar charts per metric
(the evaluated system highlighted among the baselines) and spectrogram panels of a few prompts across systems."""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

# Column order and direction; anything else found in the results is appended.
METRIC_ORDER = ("fad", "fad_inf", "kld", "mcc", "tempo_acc", "tempo_acc_octave", "key_acc", "mode_acc", "key_mirex",
                "instrument_acc", "genre_acc", "diversity", "mem_exact", "mem_approx")
LOWER_IS_BETTER = ("fad", "fad_inf", "kld", "mem_exact", "mem_approx")
COUNT_COLUMNS = ("n", "n_paired")


def _family(metric: str) -> str:
    for m in sorted(METRIC_ORDER, key=len, reverse=True):
        if metric == m or metric.startswith(m + "_"):
            return m
    return metric


def metric_columns(results: dict) -> list[str]:
    names = []
    for r in results.values():
        for k in r["metrics"]:
            if k not in names and k not in COUNT_COLUMNS:
                names.append(k)
    rank = {m: i for i, m in enumerate(METRIC_ORDER)}
    names = [n for n in names if any(r["metrics"].get(n) is not None for r in results.values())]
    return sorted(names, key=lambda n: (rank.get(_family(n), len(rank)), n))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def markdown_table(results: dict) -> str:
    """{system: {"metrics": {...}}} -> Markdown: a row per system, a column per metric (↓ lower is better)."""
    cols = metric_columns(results)
    head = ["system", "n"] + [c + (" ↓" if _family(c) in LOWER_IS_BETTER else "") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        m = r["metrics"]
        lines.append("| " + " | ".join([name, _fmt(m.get("n"))] + [_fmt(m.get(c)) for c in cols]) + " |")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def metric_bars(results: dict, out_dir: str, highlight: Sequence[str] = ()) -> list[str]:
    """One PNG per metric: a bar per system; highlighted systems (the evaluated ones) in colour, baselines grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for col in metric_columns(results):
        names = [n for n, r in results.items() if r["metrics"].get(col) is not None]
        if not names:
            continue
        vals = [float(results[n]["metrics"][col]) for n in names]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
        colors = ["tab:blue" if n in highlight else "0.6" for n in names]
        ax.bar(range(len(names)), vals, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        arrow = " (lower is better)" if _family(col) in LOWER_IS_BETTER else ""
        ax.set_title(col + arrow, fontsize=10)
        for i, v in enumerate(vals):
            ax.text(i, v, _fmt(v), ha="center", va="bottom", fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"metric_{_safe(col)}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def spectrogram_panels(systems: dict, out_dir: str, num_prompts: int = 4, seconds: float = 10.0) -> list[str]:
    """For the first `num_prompts` prompts of the first system, one PNG with that prompt's audio in every system
    side by side (`musiclm_jax.audio.plot.save_spectrogram_png`), resampled to a common rate."""
    from musiclm_jax.audio.io import resample
    from musiclm_jax.audio.plot import save_spectrogram_png

    if not systems:
        return []
    first = next(iter(systems.values()))
    prompts = []
    for it in first:
        if it.prompt not in prompts:
            prompts.append(it.prompt)
        if len(prompts) >= num_prompts:
            break
    panels = []
    for prompt in prompts:
        waves, titles = [], []
        for name, items in systems.items():
            it = next((x for x in items if x.prompt == prompt), None)
            if it is not None:
                waves.append(resample(it.wave, it.sample_rate, 16000)[: int(seconds * 16000)])
                titles.append(name)
        panels.append((waves, titles))
    # one length for every panel (zero-padded), so the mel features compile once
    length = max((len(w) for waves, _ in panels for w in waves), default=0)
    paths = []
    for k, (waves, titles) in enumerate(panels):
        waves = [np.pad(w, (0, length - len(w))) for w in waves]
        if waves:
            path = save_spectrogram_png(os.path.join(out_dir, f"samples_{k:02d}.png"), waves, 16000, titles)
            paths.append(path)
    return paths


def write_report(out_dir: str, results: dict, systems: dict | None = None, highlight: Sequence[str] = (),
                 extra: dict | None = None, plots: bool = True) -> dict:
    """Writes results.json, report.md and the PNGs into `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    payload = dict(extra or {}, systems=results)
    json_path = os.path.join(out_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    table = markdown_table(results)
    md_path = os.path.join(out_dir, "report.md")
    skipped = (extra or {}).get("skipped", {})
    with open(md_path, "w") as f:
        f.write("# Evaluation report\n\n" + table + "\n\n")
        f.write("↓: lower is better. fad_*/kld_*/diversity_* per embedding backend; accuracies are fractions of "
                "clips with that truth field; real audio's FAD is between two halves of the reference set.\n")
        if skipped.get("count"):
            f.write(f"\nSkipped {skipped['count']} item(s): " +
                    "; ".join(f"{s['item']} ({s['reason']})" for s in skipped["items"]) + "\n")
    paths = {"json": json_path, "markdown": md_path, "plots": []}
    if plots:
        paths["plots"] = metric_bars(results, out_dir, highlight) + spectrogram_panels(systems or {}, out_dir)
    return paths
