"""Export trained parts into one `MusicLM.from_pretrained` directory (the last step of `musiclm-jax quickstart`).

    python -m musiclm_jax.export --work_dir out/quickstart --out_dir weights/musiclm

`<work_dir>/{mulan,semantic,codec,stage_semantic,stage_coarse,stage_fine}` are model directories of the trainer;
each is copied as an inference-only checkpoint (parameters and batch statistics; no optimizer state, see
`train.checkpoints.export_inference`). A frozen pretrained MiniLM text tower is left out of MuLan and read from its
package at load time. Writes `musiclm.json` (token sizes, semantic rate, decoding windows) and `export.json` (the
size of each part and the training record of the quickstart steps).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from musiclm_jax.lm import stages as st

PARTS = ("mulan", "semantic", "codec", "stage_semantic", "stage_coarse", "stage_fine")
MULAN_TEXT_TOWER = "['params']['mulan']['text']"


def export(work_dir: str, out_dir: str, *, sizes: st.TokenSizes = st.QUICKSTART, semantic_rate: float = 25.0,
           windows: dict | None = None, sampling: dict | None = None) -> dict:
    """Exports the trained parts of `work_dir` for inference. `sampling`: the model's recommended decoding settings
    (musiclm.json "sampling", what generate/infer use unless told otherwise); default guidance 3, which the model
    card's evaluation recommends."""
    from musiclm_jax.mulan.model import MuLanConfig
    from musiclm_jax.train.checkpoints import export_inference
    from musiclm_jax.train.loader import saved_config

    missing = [p for p in PARTS if not os.path.isdir(os.path.join(work_dir, p, "checkpoints"))]
    if missing:
        raise ValueError(f"{work_dir} lacks trained {missing}: run `musiclm-jax quickstart` (it resumes) first")
    recorded = {stage: _recorded_sizes(os.path.join(work_dir, f"stage_{stage}")) for stage in ("semantic", "coarse")}
    sizes = dataclasses.replace(sizes, beat_phases=int(recorded["semantic"].get("beat_phases", 0)),
                                key_stages=tuple(s for s in recorded if s in recorded[s].get("key_stages", ())))
    beat_stages = tuple(s for s in recorded if recorded[s].get("beat_phases", 0)
                        and s in recorded[s].get("beat_stages", ("semantic",)))
    if beat_stages:   # a coarse stage told the tempo too (TokenSizes.beat_stages)
        sizes = dataclasses.replace(sizes, beat_stages=beat_stages)
    if recorded["semantic"].get("melody_aligned"):   # the pitch-class melody stream (melody/pitch.py)
        sizes = dataclasses.replace(sizes, **{k: recorded["semantic"][k] for k in (
            "melody_levels", "melody_codes", "melody_stages", "melody_aligned")})
    os.makedirs(out_dir, exist_ok=True)
    if sizes.melody_aligned:
        from musiclm_jax.melody.pitch import PitchMelody
        PitchMelody().save(os.path.join(out_dir, "melody"))
    report = {"parts": {}}
    for part in PARTS:
        drop = []
        if part == "mulan":
            cfg = saved_config(os.path.join(work_dir, part), MuLanConfig)
            if cfg.freeze_text_tower and cfg.text.pretrained:
                drop = [MULAN_TEXT_TOWER]
        dst = os.path.join(out_dir, part)
        if os.path.islink(dst):   # e.g. the shipped codec, a link to weights/codec_vocos: replaced by a real copy
            os.unlink(dst)
        report["parts"][part] = export_inference(os.path.join(work_dir, part), dst, drop=drop)
    windows = windows or {"semantic_s": 6.0, "coarse_s": 2.0, "fine_s": 2.0, "prefix_fraction": 0.5}  # the training crops
    # Guidance 3, and guidance that also sharpens the tempo / key / melody of stages told them (the evaluation's
    # choices).
    sampling = sampling or {"temperatures": [1.0, 0.95, 0.4], "top_k": 0, "top_p": 1.0, "guidance_scale": 3.0,
                            "guide_tempo": sizes.has_beat, "guide_key": sizes.has_key,
                            "guide_melody": sizes.melody_aligned}
    manifest = {"sizes": dataclasses.asdict(sizes), "semantic_rate": semantic_rate, "windows": windows,
                "sampling": sampling}
    with open(os.path.join(out_dir, "musiclm.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    done_dir = os.path.join(work_dir, "done")
    if os.path.isdir(done_dir):
        report["training"] = {}
        for name in sorted(os.listdir(done_dir)):
            with open(os.path.join(done_dir, name)) as f:
                report["training"][name.removesuffix(".json")] = json.load(f)
    report["total_bytes"] = sum(p["bytes"] for p in report["parts"].values())
    with open(os.path.join(out_dir, "export.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _recorded_sizes(stage_dir: str) -> dict:
    """The TokenSizes fields a stage checkpoint records with its time-aligned layout ({} for a stage without one):
    where the manifest reads beat_phases (tempo conditioning), key_stages (key conditioning) and the pitch-class
    melody (melody_aligned) from, so that it says what the stages were trained with."""
    from musiclm_jax.train.checkpoints import Checkpointer

    ckpt = Checkpointer(stage_dir, async_save=False)
    try:
        aligned = (ckpt.read_meta().get("model_config") or {}).get("aligned") or {}
    finally:
        ckpt.close()
    return dict(aligned.get("sizes") or {})


STAGES = ("stage_semantic", "stage_coarse", "stage_fine")


def merge(a_dir: str, b_dir: str, lam: float, out_dir: str) -> dict:
    """Model merging (the MusicLM follow-ups' weight interpolation): a `MusicLM.from_pretrained` directory whose stage
    LMs are (1 - lam) * a + lam * b. `a` and `b` must be two finetunings of one base: the same token layout
    (musiclm.json) and the same tokenizers (codec, w2v-BERT + k-means, MuLan, compared by content), which are copied
    from `a`. Returns {"lam", "stages": {stage: {...}}}."""
    import shutil

    from musiclm_jax.quantization.fingerprint import params_fingerprint
    from musiclm_jax.train.checkpoints import merge_inference, read_inference_state

    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"--lam must be in [0, 1] (0 gives --a, 1 gives --b), got {lam}")
    for d in (a_dir, b_dir):
        if not os.path.exists(os.path.join(d, "musiclm.json")):
            raise ValueError(f"{d} is not an exported MusicLM (no musiclm.json): pass directories like weights/musiclm")
    if os.path.realpath(out_dir) in (os.path.realpath(a_dir), os.path.realpath(b_dir)):
        raise ValueError("--out must be a new directory, not one of the two models")
    manifests = []
    for d in (a_dir, b_dir):
        with open(os.path.join(d, "musiclm.json")) as f:
            manifests.append(json.load(f))
    if manifests[0]["sizes"] != manifests[1]["sizes"] or manifests[0]["windows"] != manifests[1]["windows"]:
        raise ValueError(f"{a_dir} and {b_dir} have different token layouts or windows (musiclm.json): merge only "
                         "finetunings of the same base")
    for part in PARTS:
        if part in STAGES:
            continue
        fps = [params_fingerprint(read_inference_state(os.path.join(d, part))[2]) for d in (a_dir, b_dir)]
        if fps[0] != fps[1]:
            raise ValueError(f"the two models' {part} differ ({fps[0]} vs {fps[1]}): their tokens mean different "
                             "things, so their stage LMs cannot be merged; merge only finetunings of the same base")
    os.makedirs(out_dir, exist_ok=True)
    report = {"lam": lam, "a": a_dir, "b": b_dir, "stages": {}}
    for part in PARTS:
        src, dst = os.path.join(a_dir, part), os.path.join(out_dir, part)
        if part in STAGES:
            report["stages"][part] = merge_inference(src, os.path.join(b_dir, part), lam, dst)
        else:
            if os.path.lexists(dst):
                shutil.rmtree(dst) if os.path.isdir(dst) and not os.path.islink(dst) else os.unlink(dst)
            shutil.copytree(src, dst)  # a real copy (the shipped codec is a link)
    with open(os.path.join(out_dir, "musiclm.json"), "w") as f:
        json.dump(manifests[0], f, indent=1)
    with open(os.path.join(out_dir, "merge.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m musiclm_jax.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", required=True)
    p.add_argument("--out_dir", required=True)
    args = p.parse_args(argv)
    try:
        report = export(args.work_dir, args.out_dir)
    except ValueError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v["bytes"] for k, v in report["parts"].items()}), f"total {report['total_bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
