"""Evaluation of generated music: FAD / FAD-inf, KLD, MuLan cycle consistency, SynthCaps adherence (tempo, key,
mode, lead instrument, genre), diversity and memorization, with baselines and ceilings computed by the same code.

    backends.py   embedding / classifier backends behind one protocol (mel, mulan:DIR, musicnn, module:pkg.mod:fn)
    metrics.py    the metrics, pure numpy/scipy (plus librosa for tempo and chroma)
    data.py       prompts files (generated and reference) -> items; SynthCaps export
    evaluate.py   Evaluator: pairs items with references, scores one system with every metric its inputs allow
    baselines.py  real audio, codec round trip, nearest-training-clip retrieval, random training clip
    report.py     JSON + Markdown table + PNG plots
    chain.py      the stage-by-stage diagnosis: real -> codec -> fine -> acoustic -> audio tokens -> text
    codec.py      codec quality (`codec eval`): bitrate curve, Opus, tempo/key of round trips, frame-rate comb
    semantic_probe.py  linear probes of semantic features and tokens (`semantic probe`)
    commands.py   `musiclm-jax eval` (and `eval export-synthcaps`, `eval fit-probe`, `eval chain`)
"""
import os as _os

# Where evaluation commands write their JSON when no --out is given: never into the model directory (which may be
# the shipped, version-controlled weights/).
DEFAULT_OUT_ROOT = _os.path.join("out", "eval")


def default_output(model_dir: str, filename: str) -> str:
    """out/eval/<model folder name>/<filename>: the default result path of an evaluation of `model_dir`."""
    name = _os.path.basename(_os.path.normpath(_os.path.expanduser(model_dir))) or "model"
    return _os.path.join(DEFAULT_OUT_ROOT, name, filename)
