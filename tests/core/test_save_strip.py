"""Saving a patched model is all or nothing; stripping keeps how the model was compiled."""

import os

import keras
import numpy as np
import pytest

from keras_llmopt import clustering, quantization, sparsity


class _PlainCallableLoss:
    """A loss Keras cannot serialize (no ``get_config``): ``model.save`` fails on it."""

    def __call__(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_pred))


def _functional():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu", name="up")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="down")(hidden))


def test_failed_save_of_a_pruned_kerashub_model_leaves_no_file(tmp_path, tiny_llama_lm):
    pruned = sparsity.prune_low_magnitude(tiny_llama_lm(), sparsity.ConstantSparsity(0.5, 0))
    pruned.compile(optimizer="adam", loss=_PlainCallableLoss())
    target = tmp_path / "pruned.keras"
    with pytest.raises(TypeError, match="Cannot serialize"):
        pruned.save(target)
    assert os.listdir(tmp_path) == []  # neither a 0-byte file nor a temporary one
    existing = tmp_path / "existing.keras"
    existing.write_bytes(b"an earlier model")
    with pytest.raises(TypeError, match="Cannot serialize"):
        pruned.save(existing)
    assert existing.read_bytes() == b"an earlier model"
    assert os.listdir(tmp_path) == ["existing.keras"]
    # Once it can be serialized, the same call writes a complete file over the old one.
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
    pruned.save(existing)
    assert os.listdir(tmp_path) == ["existing.keras"]
    loaded = keras.saving.load_model(existing)
    masks = sorted(v.path for v in loaded.variables if "mask" in v.path)
    assert masks == sorted(v.path for v in pruned.variables if "mask" in v.path) and masks


@pytest.mark.backend_agnostic
def test_failed_save_of_a_pruned_functional_model_leaves_no_file(tmp_path):
    pruned = sparsity.prune_low_magnitude(_functional(), sparsity.ConstantSparsity(0.5, 0))
    pruned.compile(optimizer="sgd", loss=_PlainCallableLoss())
    with pytest.raises(TypeError):
        pruned.save(tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []
    pruned.compile(optimizer="sgd", loss="mse")
    pruned.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))


def test_strip_keeps_a_kerashub_causal_lm_sampler_and_compile(tiny_llama_lm):
    keras_hub = pytest.importorskip("keras_hub")
    lm = tiny_llama_lm()
    lm.compile(
        optimizer=keras.optimizers.SGD(0.25),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        sampler=keras_hub.samplers.TopKSampler(k=3, seed=7),
    )
    pruned = sparsity.prune_low_magnitude(lm, sparsity.ConstantSparsity(0.5, 0))
    stripped = sparsity.strip_pruning(pruned)
    for model in (pruned, stripped):
        assert isinstance(model.sampler, keras_hub.samplers.TopKSampler)
        assert model.sampler.get_config() == lm.sampler.get_config()  # k=3, not the default 5
        assert model.sampler is not lm.sampler
        config = model.get_compile_config()
        assert config["optimizer"]["class_name"] == "SGD"
        assert config["optimizer"]["config"]["learning_rate"] == pytest.approx(0.25)
        assert config["loss"] == lm.get_compile_config()["loss"]

    lm.compile(sampler="greedy")
    assert type(sparsity.strip_pruning(pruned).sampler).__name__ == "TopKSampler"
    stripped = sparsity.strip_pruning(sparsity.prune_low_magnitude(lm))
    assert isinstance(stripped.sampler, keras_hub.samplers.GreedySampler)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("technique", ["pruning", "quantization", "clustering"])
def test_strip_keeps_the_compile_config_of_a_functional_model(technique):
    apply, strip = {
        "pruning": (sparsity.prune_low_magnitude, sparsity.strip_pruning),
        "quantization": (quantization.quantize_model, quantization.strip_quantization),
        "clustering": (
            lambda m: clustering.cluster_weights(m, number_of_clusters=4),
            clustering.strip_clustering,
        ),
    }[technique]
    patched = apply(_functional())
    patched.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.MeanSquaredError(),
        metrics=["mae"],
    )
    patched.fit(np.zeros((4, 8), "float32"), np.zeros((4, 4), "float32"), verbose=0)
    stripped = strip(patched)
    assert stripped.compiled
    before, after = patched.get_compile_config(), stripped.get_compile_config()
    assert after["loss"] == before["loss"] and after["metrics"] == before["metrics"]
    assert after["optimizer"]["class_name"] == "Adam"
    assert after["optimizer"]["config"]["learning_rate"] == pytest.approx(3e-3)
    # A fresh optimizer: the patched model's moments would not fit the stripped weights.
    assert int(keras.ops.convert_to_numpy(stripped.optimizer.iterations)) == 0
    history = stripped.fit(np.ones((4, 8), "float32"), np.ones((4, 4), "float32"), verbose=0)
    assert set(history.history) == {"loss", "mae"}


@pytest.mark.backend_agnostic
def test_strip_of_an_uncompiled_model_stays_uncompiled():
    stripped = sparsity.strip_pruning(sparsity.prune_low_magnitude(_functional()))
    assert not stripped.compiled
