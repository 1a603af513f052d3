import keras
import numpy as np
import pytest

from keras_llmopt import clustering, quantization, sparsity
from keras_llmopt._src.clustering import cluster as cluster_lib


def _unique_per_kernel(model, names):
    return {n: len(np.unique(keras.ops.convert_to_numpy(model.get_layer(n).kernel))) for n in names}


@pytest.mark.backend_agnostic
def test_cluster_gpt_trains_centroids_and_strips_to_n_values(fresh_tiny):
    before = [w.copy() for w in fresh_tiny.get_weights()]
    clustered = clustering.cluster_weights(fresh_tiny, 8)
    assert "block_0_attention/query" in clustered.clustering_report.selected_paths
    assert "lm_head" not in clustered.clustering_report.selected_paths
    for a, b in zip(before, fresh_tiny.get_weights()):
        np.testing.assert_array_equal(a, b)  # the user's model is untouched
    layer = clustered.get_layer("block_0_mlp_up")
    state = vars(layer)[cluster_lib.STATE_ATTR]
    centroids = keras.ops.convert_to_numpy(state.entries[0][1]).copy()
    x = np.random.default_rng(0).integers(0, 256, (8, 32)).astype("int32")
    clustered.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    clustered.fit(x, np.roll(x, -1, 1), batch_size=8, epochs=2, verbose=0)
    trained = keras.ops.convert_to_numpy(state.entries[0][1])
    assert not np.allclose(trained, centroids)  # gradients reach the centroids
    plain = clustering.strip_clustering(clustered)
    counts = _unique_per_kernel(plain, ["block_0_mlp_up", "block_1_mlp_down"])
    assert counts == {"block_0_mlp_up": 8, "block_1_mlp_down": 8}
    query = keras.ops.convert_to_numpy(plain.get_layer("block_0_attention").query_dense.kernel)
    assert len(np.unique(query)) == 8
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(clustered(x)), atol=1e-5
    )
    assert plain.get_layer("block_0_mlp_up").kernel.trainable


@pytest.mark.backend_agnostic
def test_sparsity_preserving_clustering_keeps_zeros():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="d")])
    kernel = keras.ops.convert_to_numpy(model.get_layer("d").kernel)
    kernel[:, ::2] = 0.0
    model.get_layer("d").kernel.assign(kernel)
    clustered = clustering.cluster_weights(model, 4, targets=["d"], preserve_sparsity=True)
    clustered.compile(keras.optimizers.SGD(0.5), "mse")
    x = np.random.default_rng(0).normal(size=(16, 16)).astype("float32")
    clustered.fit(x, np.ones((16, 32), "float32"), epochs=2, verbose=0)
    plain = clustering.strip_clustering(clustered)
    new = keras.ops.convert_to_numpy(plain.get_layer("d").kernel)
    np.testing.assert_array_equal(new == 0.0, kernel == 0.0)
    assert len(np.unique(new)) == 4  # 0 plus 3 trained centroids


@pytest.mark.backend_agnostic
def test_cluster_a_pruned_model_strips_its_pruning_first(fresh_tiny):
    pruned = sparsity.prune_low_magnitude(fresh_tiny, sparsity.ConstantSparsity(0.5, 0))
    clustered = clustering.cluster_weights(pruned, 16, preserve_sparsity=True)
    assert clustered.clustering_report.selected_paths


def test_cluster_bad_inputs(fresh_tiny):
    with pytest.raises(ValueError, match="number_of_clusters=1"):
        clustering.cluster_weights(fresh_tiny, 1)
    with pytest.raises(ValueError, match="cluster_centroids_init='median'"):
        clustering.cluster_weights(fresh_tiny, 4, cluster_centroids_init="median")
    with pytest.raises(TypeError, match="keras.Model"):
        clustering.cluster_weights([1, 2], 4)
    with pytest.raises(ValueError, match="no clustered layers"):
        clustering.strip_clustering(fresh_tiny)
    with pytest.raises(ValueError, match="fewer than number_of_clusters"):
        clustering.cluster_weights(fresh_tiny, 100_000)
    quantized = quantization.quantize_model(fresh_tiny)
    with pytest.raises(ValueError, match="carries \\['quantization'\\]"):
        clustering.cluster_weights(quantized, 4)
