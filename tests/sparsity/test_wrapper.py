import keras
import numpy as np
import pytest
from keras import layers, ops

from keras_llmopt import sparsity

pytestmark = pytest.mark.backend_agnostic

SCHEDULE = sparsity.ConstantSparsity(0.5, 0, frequency=1)


def _masks(wrapper):
    return [ops.convert_to_numpy(pw.mask) for pw in wrapper.pruned]


@pytest.mark.parametrize(
    "layer, x, paths",
    [
        (layers.Dense(8), np.ones((2, 16), "float32"), ["kernel"]),
        (layers.EinsumDense("ab,bc->ac", (8,)), np.ones((2, 16), "float32"), ["kernel"]),
        (layers.Conv1D(8, 3), np.ones((2, 10, 4), "float32"), ["kernel"]),
        (layers.Conv2D(8, 3), np.ones((2, 6, 6, 4), "float32"), ["kernel"]),
        (layers.Embedding(32, 8), np.arange(6).reshape(2, 3), ["embeddings"]),
    ],
)
def test_wrapper_prunes_each_layer_type(layer, x, paths):
    wrapper = sparsity.PruneLowMagnitude(layer, SCHEDULE)
    inference = ops.convert_to_numpy(wrapper(x))
    assert wrapper.pruned_weight_paths == paths
    assert all(m.mean() == 1.0 for m in _masks(wrapper))
    out = ops.convert_to_numpy(wrapper(x, training=True))
    (mask,) = _masks(wrapper)
    assert mask.mean() == 0.5
    assert int(ops.convert_to_numpy(wrapper.pruning_step)) == 0
    # The variable itself is untouched; the forward pass uses weight * mask.
    weight = ops.convert_to_numpy(wrapper.pruned[0].variable)
    assert np.count_nonzero(weight) == weight.size
    assert not np.allclose(out, inference)


def test_wrapper_on_multi_head_attention_prunes_qkvo_and_round_trips():
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attn")
    wrapper = sparsity.PruneLowMagnitude(mha, SCHEDULE)
    inputs = keras.Input((None, 8))
    model = keras.Model(inputs, wrapper(inputs, inputs, use_causal_mask=True))
    assert wrapper.name == "prune_low_magnitude_attn"
    assert wrapper.pruned_weight_paths == [
        "query/kernel",
        "key/kernel",
        "value/kernel",
        "attention_output/kernel",
    ]
    x = np.random.RandomState(0).randn(2, 5, 8).astype("float32")
    model(x, training=True)
    assert [m.mean() for m in _masks(wrapper)] == [0.5] * 4
    config = wrapper.get_config()
    clone = sparsity.PruneLowMagnitude.from_config(config)
    assert clone.pruned_weight_paths == wrapper.pruned_weight_paths
    assert clone.pruning_schedule == SCHEDULE


def test_wrapper_bad_inputs():
    with pytest.raises(TypeError, match="Received: layer="):
        sparsity.PruneLowMagnitude("dense")
    with pytest.raises(ValueError, match="Received: block_pooling_type='MIN'"):
        sparsity.PruneLowMagnitude(layers.Dense(4), block_pooling_type="MIN")
    with pytest.raises(ValueError, match="Received: sparsity_m_by_n=3"):
        sparsity.PruneLowMagnitude(layers.Dense(4), sparsity_m_by_n=3)
    with pytest.raises(TypeError, match="Received: pruning_schedule=0.5"):
        sparsity.PruneLowMagnitude(layers.Dense(4), pruning_schedule=0.5)
    odd = sparsity.PruneLowMagnitude(layers.Dense(4, name="odd"), sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match="layer 'prune_low_magnitude_odd'.*not divisible by n=4"):
        odd.build((None, 6))
    block = sparsity.PruneLowMagnitude(layers.Dense(4, name="blk"), block_size=(3, 3))
    with pytest.raises(ValueError, match="block_size=\\(3, 3\\) does not divide"):
        block.build((None, 6))
    norm = sparsity.PruneLowMagnitude(layers.LayerNormalization())
    with pytest.raises(ValueError, match="no prunable weights"):
        norm.build((None, 6))


def test_list_of_layers_gives_list_of_wrappers():
    wrapped = sparsity.prune_low_magnitude([layers.Dense(2), layers.Dense(3)], SCHEDULE)
    assert [type(w).__name__ for w in wrapped] == ["PruneLowMagnitude"] * 2
