import keras
import numpy as np
import pytest

from keras_llmopt import reference


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "preset, expected_params",
    [
        # embeddings + 4 * block + final LN + head, counted by hand in the terms.
        ("small", 256 * 256 + 128 * 256 + 4 * 789_760 + 512 + 256 * 256 + 256),
        ("tiny", 256 * 64 + 64 * 64 + 2 * 49_984 + 128 + 64 * 256 + 256),
    ],
)
def test_preset_shapes_and_parameter_count(preset, expected_params):
    model = reference.build_gpt(preset)
    config = reference.GPTConfig.preset(preset)
    assert model.count_params() == expected_params
    tokens = np.zeros((2, config.sequence_length), "int32")
    assert tuple(model(tokens).shape) == (2, config.sequence_length, 256)
    # Shorter inputs work too (positions come from the input length).
    assert tuple(model(tokens[:, :5]).shape) == (2, 5, 256)


def test_small_is_about_3_3_million_parameters():
    assert 3.2e6 < reference.build_gpt("small").count_params() < 3.4e6


@pytest.mark.backend_agnostic
def test_attention_is_causal(fresh_tiny):
    tokens = np.random.default_rng(0).integers(0, 256, (1, 16)).astype("int32")
    changed = tokens.copy()
    changed[0, 10:] = (changed[0, 10:] + 1) % 256
    a, b = (
        keras.ops.convert_to_numpy(fresh_tiny(tokens)),
        keras.ops.convert_to_numpy(fresh_tiny(changed)),
    )
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-4


def test_same_seed_same_weights():
    a = reference.build_gpt("tiny", seed=3).get_weights()
    b = reference.build_gpt("tiny", seed=3).get_weights()
    c = reference.build_gpt("tiny", seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("approximate", [False, True])
def test_save_and_load_round_trip(tmp_path, approximate):
    config = reference.GPTConfig(
        sequence_length=16,
        d_model=32,
        num_layers=1,
        num_heads=2,
        mlp_dim=64,
        gelu_approximate=approximate,
    )
    model = reference.build_gpt(config, seed=0)
    path = tmp_path / "gpt.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    tokens = np.arange(32, dtype="int32").reshape(2, 16)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(tokens)),
        keras.ops.convert_to_numpy(loaded(tokens)),
        atol=1e-6,
    )
    layer_types = {type(layer).__module__.split(".")[0] for layer in loaded.layers}
    assert layer_types == {"keras"}, "the reference model must use built-in Keras layers only"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 3}, "num_heads"),
        ({"d_model": 0}, "d_model=0"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_bad_config(kwargs, message):
    base = dict(sequence_length=16, d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
    with pytest.raises(ValueError, match=message):
        reference.GPTConfig(**{**base, **kwargs})


def test_unknown_preset():
    with pytest.raises(ValueError, match="accepted: \\['small', 'tiny'\\]"):
        reference.build_gpt("huge")


@pytest.mark.backend_agnostic
def test_same_shaped_kernels_start_different():
    model = reference.build_gpt("tiny")
    seen = {}
    for weight in model.weights:
        if len(weight.shape) < 2 or "bias" in weight.path:
            continue
        value = keras.ops.convert_to_numpy(weight)
        for other_name, other in seen.get(tuple(weight.shape), []):
            assert not np.allclose(value, other), f"{weight.path} starts equal to {other_name}"
        seen.setdefault(tuple(weight.shape), []).append((weight.path, value))
    assert len(seen[(64, 256)]) >= 3  # mlp_up of both blocks and lm_head were compared
