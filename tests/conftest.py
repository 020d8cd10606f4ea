"""Test setup: 8 fake CPU devices (set before jax is imported) and quiet TensorFlow."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# A persistent XLA compilation cache shared by the workers and the commands they spawn: the suite is compile-bound
# and its files build the same tiny models again and again (test_infer after test_pipeline: 75 s -> 26 s). It lives
# in the checkout (git-ignored), so a fresh clone starts cold; the size cap keeps repeated runs from growing it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

# The longest files first (measured): `make test` runs the suite on two workers (pytest-xdist, one file per worker
# at a time), and a long file started last runs alone at the end while the other worker idles.
SLOW_FIRST = ("test_readme.py", "test_codec_train.py", "test_rl.py", "test_tasks.py", "test_weights.py",
              "test_key_conditioning.py", "test_tempo_conditioning.py", "test_melody_conditioning.py", "test_merge.py",
              "test_distill.py", "test_codec_vocos.py", "test_mulan_train.py", "test_benchmarks.py",
              "test_multihost.py", "test_launch.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: the rest keep their order
