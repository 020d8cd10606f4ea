"""Test setup: 8 fake CPU devices (set before jax is imported) and quiet TensorFlow."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# The longest files first: `make test` runs the suite on two workers (pytest-xdist, one file per worker at a time),
# and a long file started last would run alone at the end.
SLOW_FIRST = ("test_readme.py", "test_codec_train.py", "test_benchmarks.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order
