"""The package's layers: no module imports one above it (imports inside functions included).

Lowest first; a package may import its own modules and any lower layer, never a higher one or a sibling at its own
layer (the model families stay independent of each other). A `commands.py` module anywhere is command-line glue and
sits in the top layer with the `cli/` package: it may import from every layer (the top layer's modules import each
other), and nothing below imports it.
"""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "musiclm_jax")

LAYERS = [
    {"resources", "sampling", "tempo", "musical_key", "audio"},   # repository files, decoding defaults, prompt
                                                                  # tempo and key, waveform I/O
    {"data"},                                 # TFDS builders and readers (SynthCaps, your own captioned audio)
    {"train"},                                # the one trainer, partitioning, checkpoints, gin
    {"quantization"},                         # k-means, residual VQ, fingerprints
    {"codec", "lm"},                          # model families that depend on no other family
    {"semantic", "mulan", "melody"},
    {"tokenizers", "pipeline", "export", "batch_decode"},  # the tokenizers; MusicLM; its directory; batch decoding
    {"tasks"},                                # SeqIO tasks and the Beam token cache
    {"eval"},                                 # the evaluation suite and the diagnoses
    {"finetune"},                             # finetuning a trained MusicLM (guidance distillation; rewards)
    {"cli", "infer", "quickstart", "commands"},
]


def _layer(module: str) -> tuple[int, str]:
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    if parts and parts[-1] == "commands":
        top = "commands"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i, top
    raise AssertionError(f"{module}: its package {top!r} is in no layer of tests/test_structure.py; add it")


def _modules():
    for dirpath, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield path, rel.removesuffix(".__init__")


def _imports(path: str, module: str):
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("musiclm_jax.") and _is_module(name):
                yield node.lineno, name


def _is_module(name: str) -> bool:
    rel = os.path.join(os.path.dirname(ROOT), *name.split("."))
    return os.path.isdir(rel) or os.path.exists(rel + ".py")


def upward_imports() -> list[str]:
    bad = []
    for path, module in _modules():
        if module == "musiclm_jax":
            continue
        here, top = _layer(module)
        for line, name in _imports(path, module):
            there, other = _layer(name)
            if other == top or (there == here == len(LAYERS) - 1):   # own package; commands among themselves
                continue
            if there >= here:
                bad.append(f"{os.path.relpath(path, os.path.dirname(ROOT))}:{line} imports {name} "
                           f"(layer {there} {other!r} from layer {here} {top!r})")
    return bad


def test_no_import_runs_up_the_layers():
    bad = upward_imports()
    assert not bad, "imports that run back up the layers:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    pkg = tmp_path / "musiclm_jax"
    (pkg / "codec").mkdir(parents=True)
    (pkg / "eval").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "eval" / "__init__.py").write_text("")
    (pkg / "eval" / "metrics.py").write_text("")
    (pkg / "codec" / "__init__.py").write_text("")
    (pkg / "codec" / "model.py").write_text("def f():\n    from musiclm_jax.eval import metrics\n")
    (pkg / "codec" / "commands.py").write_text("from musiclm_jax.eval import metrics\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(pkg))
    bad = upward_imports()
    assert len(bad) == 2 and all("codec/model.py:2" in b for b in bad), bad
