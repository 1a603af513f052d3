import numpy as np
import pytest
from keras import ops

from keras_llmopt._src.clustering import kmeans as km

pytestmark = pytest.mark.backend_agnostic

INITS = km.CentroidInitialization.values()


def _sse(w, centroids, indices):
    return float(((np.asarray(w, np.float64) - centroids[indices]) ** 2).sum())


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("k", [16, 256])
def test_exactly_k_unique_values_after_reconstruction(k, init):
    rng = np.random.default_rng(k)
    w = rng.normal(size=(128, 64)).astype("float32")
    centroids, indices = km.kmeans_1d(w, k, init=init, iters=30)
    assert centroids.shape == (k,) and indices.shape == w.shape and indices.dtype == np.int32
    assert np.all(np.diff(centroids) > 0)
    assert np.unique(centroids[indices]).size == k
    # Lloyd's iterations improve on the initial codebook.
    start = km.init_centroids(w, k, init)
    start_indices = np.argmin(np.abs(w.reshape(-1, 1) - start.reshape(1, -1)), axis=1)
    assert _sse(w, centroids, indices) <= _sse(w.ravel(), start, start_indices) + 1e-9


def test_recovers_separated_clumps_and_assignments_are_nearest():
    rng = np.random.default_rng(0)
    means = np.array([-3.0, -1.0, 0.5, 4.0])
    w = (means[rng.integers(0, 4, size=4000)] + rng.normal(size=4000) * 0.05).astype("float32")
    centroids, indices = km.kmeans_1d(w, 4, init="LINEAR")
    np.testing.assert_allclose(centroids, means, atol=0.02)
    nearest = np.argmin(np.abs(w[:, None] - centroids[None, :]), axis=1)
    np.testing.assert_array_equal(indices, nearest)


def test_empty_clusters_are_refilled():
    # LINEAR init on a very skewed weight leaves most centroids without members.
    w = np.concatenate([np.linspace(0.0, 0.01, 100), [100.0]]).astype("float32")
    centroids, indices = km.kmeans_1d(w, 16, init="LINEAR")
    assert np.unique(centroids[indices]).size == 16


def test_preserve_sparsity_keeps_zeros_and_zero_centroid():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 64)).astype("float32")
    w[rng.random(w.shape) < 0.5] = 0.0
    centroids, indices = km.kmeans_1d(w, 16, preserve_sparsity=True)
    clustered = centroids[indices]
    assert 0.0 in centroids.tolist()
    np.testing.assert_array_equal(clustered == 0.0, w == 0.0)  # same zeros, no new ones
    assert np.unique(clustered).size == 16


def test_fewer_distinct_values_than_clusters_is_lossless():
    w = np.array([0.5, -1.0, 0.5, 2.0, 2.0], "float32")
    centroids, indices = km.kmeans_1d(w, 4)
    np.testing.assert_array_equal(centroids[indices], w)


def test_initialisations():
    rng = np.random.default_rng(2)
    w = rng.normal(size=10_000)
    linear = km.init_centroids(w, 8, km.CentroidInitialization.LINEAR)
    np.testing.assert_allclose(linear, np.linspace(w.min(), w.max(), 8))
    dense = km.init_centroids(w, 8, "density_based")
    assert np.sum(np.abs(dense) < 1) > np.sum(np.abs(linear) < 1)  # more where the mass is
    r1 = km.init_centroids(w, 8, "RANDOM", seed=3)
    assert np.all((r1 >= w.min()) & (r1 <= w.max()))
    np.testing.assert_array_equal(r1, km.init_centroids(w, 8, "RANDOM", seed=3))
    assert not np.array_equal(r1, km.init_centroids(w, 8, "RANDOM", seed=4))
    plus = km.init_centroids(w, 8, "KMEANS_PLUS_PLUS", seed=0)
    assert np.all(np.isin(plus, w)) and np.unique(plus).size == 8


def test_accepts_tensors_and_assigns_in_keras_ops():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(32, 8)).astype("float32")
    centroids, indices = km.kmeans_1d(ops.convert_to_tensor(w), 8)
    assert indices.shape == (32, 8)
    in_graph = km.assign_to_centroids(ops.convert_to_tensor(w), centroids)
    np.testing.assert_array_equal(np.asarray(ops.convert_to_numpy(in_graph)), indices)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"k": 1}, ValueError, "number_of_clusters=1"),
        ({"k": 11}, ValueError, "must not exceed the number of weights (10)"),
        ({"k": 2.0}, ValueError, "number_of_clusters=2.0"),
        ({"k": 2, "init": "kmeans"}, ValueError, "Accepted: LINEAR, RANDOM"),
        ({"k": 2, "iters": 0}, ValueError, "iters=0"),
        ({"k": 2, "preserve_sparsity": "yes"}, ValueError, "preserve_sparsity='yes'"),
    ],
)
def test_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match="Received") as info:
        km.kmeans_1d(np.arange(10, dtype="float32"), **kwargs)
    assert fragment in str(info.value)


def test_bad_weights():
    with pytest.raises(ValueError, match="NaN"):
        km.kmeans_1d(np.array([1.0, np.nan, 2.0]), 2)
    with pytest.raises(TypeError, match="real numbers"):
        km.kmeans_1d(np.array(["a", "b", "c"]), 2)
