"""Mini-batch k-means: planted clusters, determinism, sharded == unsharded, save/load with fingerprint."""
import jax
import numpy as np
import pytest

from musiclm_jax.quantization import fingerprint as fp
from musiclm_jax.quantization import kmeans as km
from musiclm_jax.train import partitioning


def planted(n_per=200, k=6, dim=8, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, dim)) * 3.0
    labels = np.repeat(np.arange(k), n_per)
    x = means[labels] + spread * rng.normal(size=(len(labels), dim))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm], means


def test_recovers_planted_clusters():
    x, labels, means = planted()
    model = km.fit(x, km.KMeansConfig(num_clusters=6, batch_size=256, num_steps=30, init_samples=600))
    ids = model.predict(x)
    # Each planted cluster maps to exactly one fitted cluster and vice versa (a perfect partition).
    pairs = {(int(a), int(b)) for a, b in zip(labels, ids)}
    assert len(pairs) == 6
    assert len({b for _, b in pairs}) == 6
    # And every planted mean has a centre next to it.
    d = np.sqrt(((means[:, None] - model.centers[None]) ** 2).sum(-1)).min(1)
    assert d.max() < 0.1
    assert model.meta["last_batch_inertia"] < model.meta["first_batch_inertia"] + 1e-6


def test_same_seed_same_result_other_seed_differs():
    x, _, _ = planted(n_per=50, k=8, spread=1.0)
    cfg = km.KMeansConfig(num_clusters=8, batch_size=64, num_steps=10, init_samples=400, seed=3)
    a, b = km.fit(x, cfg), km.fit(x, cfg)
    np.testing.assert_array_equal(a.centers, b.centers)
    c = km.fit(x, km.KMeansConfig(num_clusters=8, batch_size=64, num_steps=10, init_samples=400, seed=4))
    assert not np.array_equal(a.centers, c.centers)


def test_sharded_equals_unsharded():
    assert jax.device_count() == 8
    x, _, _ = planted(n_per=64, k=5, dim=4, spread=0.5)
    cfg = km.KMeansConfig(num_clusters=5, batch_size=64, num_steps=8, init_samples=320)
    single = km.fit(x, cfg)
    mesh = partitioning.make_mesh()  # data=8
    with partitioning.axis_rules(mesh):
        sharded = km.fit(x, cfg, mesh=mesh)
    np.testing.assert_allclose(sharded.centers, single.centers, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sharded.predict(x), single.predict(x))
    with partitioning.axis_rules(mesh), pytest.raises(ValueError, match="multiple of the 8 batch shards"):
        km.fit(x, km.KMeansConfig(num_clusters=5, batch_size=60, num_steps=1, init_samples=100), mesh=mesh)


def test_dead_centres_are_reseeded():
    x, _, _ = planted(n_per=40, k=4, dim=3)
    far = np.full((4, 3), 1e3, np.float32)  # no point is ever nearest to three of these
    far[0] = 0.0
    model = km.fit(x, km.KMeansConfig(num_clusters=4, batch_size=160, num_steps=5), init_centers=far)
    assert len(np.unique(model.predict(x))) == 4


def test_save_load_and_fingerprint(tmp_path):
    x, _, _ = planted(n_per=20, k=3, dim=4)
    model = km.fit(x, km.KMeansConfig(num_clusters=3, batch_size=60, num_steps=3), fingerprint="abc123")
    model.save(str(tmp_path))
    back = km.KMeans.load(str(tmp_path), expected_fingerprint="abc123")
    np.testing.assert_array_equal(back.centers, model.centers)
    assert back.fingerprint == "abc123" and back.meta["config"]["num_clusters"] == 3
    with pytest.raises(ValueError, match="refit"):
        km.KMeans.load(str(tmp_path), expected_fingerprint="other")
    with pytest.raises(ValueError, match="fit k-means first"):
        km.KMeans.load(str(tmp_path / "missing"))
    assert fp.params_fingerprint({"a": np.ones(3)}) != fp.params_fingerprint({"a": np.zeros(3)})


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        km.fit(np.full((10, 2), np.nan, np.float32), km.KMeansConfig(num_clusters=2))
    with pytest.raises(ValueError, match="fewer than num_clusters"):
        km.fit(np.ones((3, 2), np.float32), km.KMeansConfig(num_clusters=4))


def test_cluster_usage():
    u = km.cluster_usage(np.array([0, 1, 2, 3]), 4)
    assert u["used_fraction"] == 1.0 and abs(u["normalized_entropy"] - 1.0) < 1e-9
    assert km.cluster_usage(np.array([0, 0]), 4)["entropy_nats"] == 0.0
