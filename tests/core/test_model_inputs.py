"""One description of a model's inputs, on every backend."""

import keras
import numpy as np
import pytest

from keras_llmopt import reference
from keras_llmopt._src.core.model_inputs import (
    InputSpec,
    ModelInputs,
    describe_inputs,
    infer_sequence_length,
)

pytestmark = pytest.mark.backend_agnostic


def test_reference_gpt_takes_its_length_from_the_position_embedding():
    model = reference.build_gpt("tiny")
    length = model.get_layer("position_embedding").input_dim
    described = describe_inputs(model, batch_size=1)
    assert described.names == ("tokens",) and not described.is_dict
    assert described.specs[0].shape == (1, length) and described.specs[0].dtype == "int32"
    assert described.token_input == "tokens" and described.mask_inputs == ()
    assert described.max_sequence_length == length and described.sequence_length == length
    assert described.vocabulary_size == model.get_layer("token_embedding").input_dim
    shorter = describe_inputs(model, sequence_length=length // 2)
    assert shorter.specs[0].shape == (None, length // 2)
    dynamic = describe_inputs(model, keep_dynamic=True)
    assert dynamic.specs[0].shape == (None, None) and dynamic.has_dynamic_length
    assert infer_sequence_length(model) == length


def test_too_long_sequence_length_names_the_argument_and_the_maximum():
    model = reference.build_gpt("tiny")
    length = model.get_layer("position_embedding").input_dim
    message = (
        rf"Received: sequence_length={length + 1}; accepted: at most {length} "
        r"\(the model's position embedding\)"
    )
    with pytest.raises(ValueError, match=message):
        describe_inputs(model, sequence_length=length + 1)


def test_sequential_model_with_a_fixed_length():
    model = keras.Sequential(
        [keras.Input((12,), dtype="int32"), keras.layers.Embedding(50, 4), keras.layers.Dense(3)]
    )
    described = describe_inputs(model, batch_size=2)
    assert described.specs[0].shape == (2, 12) and described.specs[0].is_tokens
    assert described.max_sequence_length == 12 and described.vocabulary_size == 50
    with pytest.raises(ValueError, match="fixed length 12. Received: sequence_length=8"):
        describe_inputs(model, sequence_length=8)


class _TokenModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.embedding = keras.layers.Embedding(40, 8)
        self.position_embedding = keras.layers.Embedding(24, 8, name="position_embedding")
        self.head = keras.layers.Dense(40)

    def call(self, tokens):
        positions = keras.ops.arange(keras.ops.shape(tokens)[1])
        return self.head(self.embedding(tokens) + self.position_embedding(positions))


def test_subclassed_model_is_one_int32_tokens_input():
    model = _TokenModel()
    model(np.zeros((1, 4), "int32"))
    described = describe_inputs(model, batch_size=1)
    assert not described.declared and not described.is_dict
    assert described.specs == (InputSpec("tokens", (1, 24), "int32", role="tokens"),)
    assert described.max_source == "position embedding"
    with pytest.raises(ValueError, match="accepted: at most 24"):
        describe_inputs(model, sequence_length=25)


def test_dict_input_model_keeps_names_roles_and_packing():
    tokens = keras.Input((None,), dtype="int32", name="ids")
    mask = keras.Input((None,), dtype="int32", name="attention_mask")
    scale = keras.Input((3,), dtype="float32", name="scale")
    x = keras.layers.Embedding(30, 3)(tokens) * keras.ops.expand_dims(
        keras.ops.cast(mask, "float32"), -1
    )
    model = keras.Model({"ids": tokens, "attention_mask": mask, "scale": scale}, x)
    described = describe_inputs(model, sequence_length=5, batch_size=1)
    assert described.is_dict
    by_name = {spec.name: spec for spec in described.specs}
    assert set(by_name) == {"ids", "attention_mask", "scale"}
    assert by_name["ids"].is_tokens and by_name["attention_mask"].is_mask
    assert by_name["scale"].role == "other" and by_name["scale"].shape == (1, 3)
    assert by_name["ids"].shape == (1, 5) and by_name["attention_mask"].shape == (1, 5)
    assert described.token_input == "ids" and described.mask_inputs == ("attention_mask",)
    packed = described.pack(list(range(len(described.specs))))
    assert packed == {name: i for i, name in enumerate(described.names)}
    with pytest.raises(ValueError, match="Expected one value per input"):
        described.pack([1])


def test_pack_positional_inputs():
    single = ModelInputs((InputSpec("x", (1,), "float32"),))
    double = ModelInputs((InputSpec("a", (1,), "float32"), InputSpec("b", (1,), "float32")))
    assert single.pack(["x"]) == "x" and double.pack(["a", "b"]) == ["a", "b"]


def test_dynamic_model_without_maximum_requires_sequence_length():
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(9, 2)])
    described = describe_inputs(model)
    assert described.max_sequence_length is None and described.sequence_length is None
    with pytest.raises(ValueError, match="Received: sequence_length=None .*pass sequence_length=N"):
        described.require_fixed_length("to_tflite")
    assert describe_inputs(model, sequence_length=7).require_fixed_length("x").sequence_length == 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sequence_length": 0}, "Received: sequence_length=0"),
        ({"batch_size": -1}, "Received: batch_size=-1"),
        ({"sequence_length": True}, "Received: sequence_length=True"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        describe_inputs(reference.build_gpt("tiny"), **kwargs)
    with pytest.raises(TypeError, match="Received: model of type str"):
        describe_inputs("model.keras")


def _gpt2():
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=120,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=20,
    )


def test_kerashub_gpt2_backbone_and_causal_lm_declare_their_maximum():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = _gpt2()
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    for model in (backbone, lm):
        described = describe_inputs(model, batch_size=1)
        assert described.is_dict and set(described.names) == {"token_ids", "padding_mask"}
        assert described.token_input == "token_ids"
        assert described.mask_inputs == ("padding_mask",)
        assert described.max_sequence_length == 20
        assert all(spec.shape == (1, 20) for spec in described.specs)
        with pytest.raises(ValueError, match="Received: sequence_length=21; accepted: at most 20"):
            describe_inputs(model, sequence_length=21)


def test_kerashub_llama_has_no_maximum_and_needs_sequence_length():
    keras_hub = pytest.importorskip("keras_hub")
    model = keras_hub.models.LlamaBackbone(
        vocabulary_size=120,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    described = describe_inputs(model, batch_size=1)
    assert described.max_sequence_length is None and described.has_dynamic_length
    with pytest.raises(ValueError, match=r"sequence_length=None.*pass sequence_length=N"):
        described.require_fixed_length("to_tflite")
    fixed = describe_inputs(model, sequence_length=1000, batch_size=1)  # no maximum to exceed
    assert all(spec.shape == (1, 1000) for spec in fixed.specs)


def test_docstring_examples_run(run_docstring_examples):
    run_docstring_examples("keras_llmopt._src.core.model_inputs")


class _UnnamedPositions(keras.Model):
    """Learned positions in an ``Embedding`` no name gives away, ``offset + arange(T)``."""

    def __init__(self, positions=24, offset=0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset
        self.tokens = keras.layers.Embedding(40, 8)
        self.wpe = keras.layers.Embedding(positions, 8)
        self.head = keras.layers.Dense(40)

    def call(self, tokens):
        positions = keras.ops.arange(keras.ops.shape(tokens)[1]) + self.offset
        return self.head(self.tokens(tokens) + self.wpe(positions))


@pytest.mark.parametrize("offset", [0, 2])
def test_unnamed_position_embedding_is_found_by_a_probe(offset):
    model = _UnnamedPositions(positions=24, offset=offset, name="unnamed")
    model(np.zeros((1, 4), "int32"))
    before = [np.array(w) for w in model.get_weights()]
    described = describe_inputs(model, batch_size=1)
    assert described.max_sequence_length == 24 - offset
    assert described.max_source == f"position embedding {model.wpe.name!r}"
    assert described.specs[0].shape == (1, 24 - offset)
    message = rf"Received: sequence_length=30; accepted: at most {24 - offset} \(the model's"
    with pytest.raises(ValueError, match=message):
        describe_inputs(model, sequence_length=30)
    assert describe_inputs(model, sequence_length=24 - offset).sequence_length == 24 - offset
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


class _TwoTokenTables(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Embedding(40, 8)
        self.second = keras.layers.Embedding(30, 8)

    def call(self, tokens):
        return self.first(tokens) + self.second(tokens)


def test_probe_does_not_take_a_token_table_for_positions_nor_build_a_model():
    model = _TwoTokenTables()
    model(np.zeros((1, 4), "int32"))
    described = describe_inputs(model)
    assert described.max_sequence_length is None and described.has_dynamic_length
    unbuilt = _UnnamedPositions(name="unbuilt")
    assert describe_inputs(unbuilt).max_sequence_length is None
    assert not unbuilt.built and unbuilt.weights == []
