import keras
import numpy as np
import pytest

from keras_llmopt import quantization
from keras_llmopt._src.quantization import state as state_lib


def _identity_model():
    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(
        32, kernel_initializer="identity", bias_initializer="zeros", name="d"
    )(inputs)
    return keras.Model(inputs, outputs)


def _data_with_outlier():
    x = np.random.default_rng(0).normal(size=(512, 32)).astype("float32")
    x[3, 5] = 100.0  # one activation outlier among 16384 values
    return x


def _output_range(q):
    ((_, state),) = [(p, s) for p, s in state_lib.states(q) if p == "d"]
    quantizer = dict(state.activation_quantizers())["output:0"]
    return [float(v) for v in quantizer.observer.range()]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_each_method_sets_ranges_and_histogram_methods_clip_the_outlier(method):
    x = _data_with_outlier()
    q = quantization.quantize_model(_identity_model())
    ranges = quantization.calibrate(q, x, method=method, batch_size=128)
    # The float model input feeds the Dense directly: it gets a range of its own.
    assert set(ranges) == {"d:input:0", "d:output:0"}
    lo, hi = _output_range(q)
    assert (lo, hi) == pytest.approx(ranges["d:output:0"])
    # The identity Dense's int8 kernel is exact, so the output is x quantized.
    mse = float(np.mean((keras.ops.convert_to_numpy(q(x)) - x) ** 2))
    if method == "minmax":
        in_lo, in_hi = ranges["d:input:0"]
        assert in_lo == pytest.approx(float(x.min()), rel=1e-3)
        assert in_hi == pytest.approx(100.0, rel=1e-3)
        # The output sees the quantized input: its range is within one int8 step.
        step = (in_hi - in_lo) / 255
        assert abs(lo - in_lo) <= step and abs(hi - in_hi) <= step
        assert mse > 0.01  # the outlier makes the int8 step ~0.4
    elif method == "mse":
        # One outlier costs more clipped than kept, so MSE may keep it, but its
        # criterion can only beat minmax's.
        baseline = quantization.quantize_model(_identity_model())
        quantization.calibrate(baseline, x, method="minmax", batch_size=128)
        minmax_mse = float(np.mean((keras.ops.convert_to_numpy(baseline(x)) - x) ** 2))
        assert hi <= 100.0 and mse <= minmax_mse * 1.01, (mse, minmax_mse)
    else:  # percentile, entropy: clip the outlier
        assert 2.0 < hi < 30.0 and -20.0 < lo < -2.0, (method, lo, hi)
        typical = np.abs(keras.ops.convert_to_numpy(q(x[8:72])) - x[8:72]).mean()
        assert typical < 0.03, (method, typical)


@pytest.mark.backend_agnostic
def test_calibrate_on_gpt_windows_and_tf_data(fresh_tiny, tiny_corpus):
    q = quantization.quantize_model(fresh_tiny)
    windows = tiny_corpus.train[:8]  # length T + 1: cut to the model's length
    ranges = quantization.calibrate(q, windows, method="percentile", batch_size=4)
    assert "block_0_attention:attention:scores" in ranges
    lo, hi = ranges["block_0_attention:attention:scores"]
    assert -50.0 < lo <= 0.0 <= hi < 50.0  # the causal mask fill is not observed
    batches = [(windows[:4, :-1], windows[:4, 1:])]
    again = quantization.calibrate(q, batches, method="minmax", num_batches=1)
    assert set(again) == set(ranges)


def test_calibrate_bad_inputs(fresh_tiny):
    q = quantization.quantize_model(fresh_tiny)
    with pytest.raises(ValueError, match="method='kl'"):
        quantization.calibrate(q, np.zeros((2, 8), "int32"), method="kl")
    with pytest.raises(ValueError, match="no activation quantizers"):
        quantization.calibrate(fresh_tiny, np.zeros((2, 8), "int32"))
    weight_only = quantization.quantize_model(fresh_tiny, scheme="4bit_weights")
    with pytest.raises(ValueError, match="no activation quantizers"):
        quantization.calibrate(weight_only, np.zeros((2, 8), "int32"))
    with pytest.raises(TypeError, match="dataset"):
        quantization.calibrate(q, 3)
    with pytest.raises(ValueError, match="batch_size"):
        quantization.calibrate(q, np.zeros((2, 8), "int32"), batch_size=0)
