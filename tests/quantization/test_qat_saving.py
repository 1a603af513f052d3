"""Quantization-aware models saved with ``model.save`` and loaded back (tfmot's workflow)."""

import copy
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_llmopt import quantization, sparsity
from keras_llmopt._src.quantization import state as state_lib


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _tokens(rows=8, length=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (rows, length)).astype("int32")


def _variables(model):
    # (Dropout seed-generator states are random per instance, not model state.)
    return [
        (v.path, keras.ops.convert_to_numpy(v))
        for v in model.variables
        if "seed_generator" not in v.path
    ]


def _assert_same_model(loaded, original, x):
    assert type(loaded).__name__ == type(original).__name__
    assert loaded.quantize_report.quantized == original.quantize_report.quantized
    assert len(state_lib.states(loaded)) == len(state_lib.states(original))
    # Every variable (weights, learned activation ranges, masks) came back.
    saved, restored = _variables(original), _variables(loaded)
    assert len(saved) == len(restored)
    for (path, a), (_, b) in zip(saved, restored):
        np.testing.assert_array_equal(a, b, err_msg=path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(original(x))
    )


@pytest.mark.backend_agnostic
def test_qat_gpt_saves_and_loads_with_its_ranges_and_trains_on(fresh_tiny, tmp_path):
    q = quantization.quantize_model(fresh_tiny)
    x = _tokens()
    q.compile(keras.optimizers.Adam(1e-3), _loss())
    q.fit(x, x, batch_size=4, verbose=0)
    path = tmp_path / "qat.keras"
    q.save(path)
    with quantization.quantize_scope():
        loaded = keras.models.load_model(path)
    _assert_same_model(loaded, q, x)
    assert loaded.optimizer is not None  # compiled as saved: training goes on
    before = keras.ops.convert_to_numpy(loaded.get_layer("block_0_mlp_up").kernel)
    loaded.fit(x, x, batch_size=4, verbose=0)
    after = keras.ops.convert_to_numpy(loaded.get_layer("block_0_mlp_up").kernel)
    assert not np.array_equal(before, after)
    # A copy is a quantization-aware model too; stripping gives the float class.
    _assert_same_model(copy.deepcopy(q), q, x)
    plain = quantization.strip_quantization(loaded)
    assert not state_lib.states(plain) and type(plain) is type(fresh_tiny)
    # The model passed in keeps its class and layers (it is never modified).
    assert type(fresh_tiny) is keras.Model or type(fresh_tiny).__name__ == "Functional"
    assert not state_lib.states(fresh_tiny)
    fresh_tiny.get_config()


def test_qat_model_loads_in_a_fresh_process(fresh_tiny, tmp_path):
    q = quantization.quantize_model(fresh_tiny, scheme="8bit_weights_16bit_activations")
    x = _tokens()
    quantization.calibrate(q, x, method="minmax")
    q.save(tmp_path / "q.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(q(x)))
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        from keras_llmopt import quantization
        with quantization.quantize_scope():
            model = keras.models.load_model({str(tmp_path / "q.keras")!r})
        y = keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "x.npy")!r})))
        np.testing.assert_array_equal(y, np.load({str(tmp_path / "y.npy")!r}))
        print("scheme", model.quantize_report.scheme)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scheme 8bit_weights_16bit_activations" in result.stdout


def test_pruned_qat_model_keeps_its_masks_through_save_and_load(fresh_tiny, tmp_path):
    pruned = sparsity.prune_low_magnitude(fresh_tiny, sparsity.ConstantSparsity(0.5, 0))
    x = _tokens()
    pruned.compile("sgd", _loss())
    pruned.fit(x, x, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    q = quantization.quantize_model(pruned)
    q.save(tmp_path / "pqat.keras")
    loaded = keras.models.load_model(tmp_path / "pqat.keras")
    _assert_same_model(loaded, q, x)
    state = vars(loaded.get_layer("block_0_mlp_up"))[state_lib.STATE_ATTR]
    mask = keras.ops.convert_to_numpy(state.weights_q[0].mask)
    assert mask.mean() == pytest.approx(0.5, abs=0.01)
    loaded.compile(keras.optimizers.Adam(1e-2), _loss())
    loaded.fit(x, x, verbose=0)  # zeros survive training after the load
    effective = keras.ops.convert_to_numpy(state.weights_q[0].variable_value())
    assert np.all(effective[mask == 0] == 0)


def test_kerashub_causal_lm_qat_saves_and_loads(tiny_gpt2_lm, tmp_path):
    import keras_hub

    lm = tiny_gpt2_lm(num_layers=1)
    q = quantization.quantize_model(lm)
    x = {"token_ids": _tokens(4, 16), "padding_mask": np.ones((4, 16), "int32")}
    quantization.calibrate(q, x, method="minmax")
    q.save(tmp_path / "hub.keras")
    loaded = keras.models.load_model(tmp_path / "hub.keras")
    assert isinstance(loaded, keras_hub.models.GPT2CausalLM)
    _assert_same_model(loaded, q, x)


class _UnregisteredScaleConfig(quantization.QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return [("kernel", quantization.WeightQuantizer(num_bits=4, per_channel=False))]


def test_custom_config_loads_inside_quantize_scope_only(tmp_path):
    inputs = keras.Input((4,))
    dense = quantization.quantize_annotate_layer(
        keras.layers.Dense(3, name="dense"), quantize_config=_UnregisteredScaleConfig()
    )
    model = keras.Model(inputs, dense(inputs))
    q = quantization.quantize_apply(model)
    q.save(tmp_path / "custom.keras")
    with pytest.raises(ValueError, match=r"layer 'dense'.*quantize_scope"):
        keras.models.load_model(tmp_path / "custom.keras")
    with quantization.quantize_scope({"_UnregisteredScaleConfig": _UnregisteredScaleConfig}):
        loaded = keras.models.load_model(tmp_path / "custom.keras")
    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(q(x))
    )
    kernel = state_lib.states(loaded)[0][1].weights_q[0].variable_value()
    assert np.unique(keras.ops.convert_to_numpy(kernel)).size <= 15
