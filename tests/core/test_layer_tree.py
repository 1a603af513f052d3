import keras
import pytest

from keras_llmopt._src.core import layer_tree, targeting

pytestmark = pytest.mark.backend_agnostic


@keras.saving.register_keras_serializable(package="test_core")
class Block(keras.layers.Layer):
    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.up = keras.layers.Dense(dim * 2, name="up")
        self.down = keras.layers.Dense(dim, name="down")

    def build(self, shape):
        self.up.build(shape)
        self.down.build(shape[:-1] + (self.dim * 2,))

    def call(self, x):
        return self.down(self.up(x))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


def _model():
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 8, name="token_embedding")(inputs)
    x = Block(8, name="block")(x)
    x = keras.layers.Conv1D(8, 3, padding="same", name="conv")(x)
    x = keras.layers.EinsumDense("btd,dhk->bthk", (None, 2, 4), name="proj")(x)
    x = keras.layers.Reshape((-1, 8))(x)
    outputs = keras.layers.Dense(50, name="lm_head")(x)
    return keras.Model(inputs, outputs)


def test_walk_layers_paths_and_order():
    paths = [n.path for n in layer_tree.walk_layers(_model())]
    assert paths.index("block") < paths.index("block/up") < paths.index("block/down")
    assert {"token_embedding", "conv", "proj", "lm_head"} <= set(paths)
    assert layer_tree.get_layer_by_path(_model(), "block/up").name == "up"
    with pytest.raises(ValueError, match="No layer at path 'nope'"):
        layer_tree.get_layer_by_path(_model(), "nope")


def test_find_weights_discovers_storage_and_input_axes():
    model = _model()
    get = lambda p: layer_tree.find_weights(layer_tree.get_layer_by_path(model, p))  # noqa: E731
    (dense,), _ = get("block/up")
    assert dense.storage_attr == "_kernel" and dense.input_axes == (0,)
    (conv,), _ = get("conv")
    conv_layer = layer_tree.get_layer_by_path(model, "conv")
    assert getattr(conv_layer, conv.storage_attr) is conv.variable
    assert conv.input_axes == (1,)  # (width, in, out)
    (einsum,), _ = get("proj")
    assert einsum.shape == (8, 2, 4) and einsum.input_axes == (0,)
    (emb,), _ = get("token_embedding")
    assert emb.storage_attr == "_embeddings" and emb.input_axes == (1,)
    weights, reason = layer_tree.find_weights(keras.layers.LayerNormalization())
    assert weights == [] and "no prunable weights" in reason


def test_register_weights_for_custom_layer_and_bad_type():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 3))

        def call(self, x):
            return x @ self.w

    layer = Scale()
    layer.build((None, 4))
    assert layer_tree.find_weights(layer)[0] == []
    layer_tree.register_weights(Scale, ["w"])
    (w,), reason = layer_tree.find_weights(layer)
    assert reason is None and w.storage_attr == "w" and w.shape == (4, 3)
    with pytest.raises(TypeError, match="Received: layer_type="):
        layer_tree.register_weights(int, ["w"])


def test_select_layers_defaults_targets_ignore_and_report():
    model = _model()
    report, selected = targeting.select_layers(model)
    assert sorted(selected) == ["block/down", "block/up", "conv", "proj"]
    assert "token embedding" in report.reason("token_embedding").reason
    assert "output head" in report.reason("lm_head").reason
    assert "block/up" in str(report)

    report, selected = targeting.select_layers(model, targets=["lm_head", "block/*"])
    assert sorted(selected) == ["block/down", "block/up", "lm_head"]
    assert report.reason("conv").reason == "not matched by `targets`"

    report, selected = targeting.select_layers(model, ignore="re:^block")
    assert sorted(selected) == ["conv", "proj"]
    assert "ignored by pattern" in report.reason("block/up").reason

    with pytest.raises(ValueError, match="match no layer"):
        targeting.select_layers(model, targets=["nothing_here"])
    with pytest.raises(TypeError, match="Received: ignore="):
        targeting.select_layers(model, ignore=[3])


def test_path_matches_suffix_glob_and_regex():
    assert targeting.path_matches("backbone/layer_0/attention/query", "attention/*")
    assert targeting.path_matches("backbone/lm_head", "lm_head")
    assert not targeting.path_matches("backbone/lm_head_x", "lm_head")
    assert targeting.path_matches("block_3_mlp_up", "re:block_[0-9]+_mlp")
