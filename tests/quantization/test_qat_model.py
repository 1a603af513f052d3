import keras
import numpy as np
import pytest

from keras_llmopt import quantization
from keras_llmopt._src.quantization import state as state_lib


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _tokens(rows=8, length=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (rows, length)).astype("int32")


@pytest.mark.backend_agnostic
def test_quantize_model_gpt_covers_transformer_and_leaves_user_model(fresh_tiny):
    before = [w.copy() for w in fresh_tiny.get_weights()]
    q = quantization.quantize_model(fresh_tiny)
    quantized = set(q.quantize_report.quantized)
    for path in (
        "token_embedding",
        "embedding_sum",
        "block_0_ln1",
        "block_0_attention",
        "block_0_attention/query",
        "block_0_attention/attention_output",
        "block_0_add1",
        "block_1_mlp_up",
        "lm_head",
    ):
        assert path in quantized, path
    assert not state_lib.states(fresh_tiny)  # the user's model is untouched
    for a, b in zip(before, fresh_tiny.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = _tokens()
    quantization.calibrate(q, x, method="minmax")
    # With ranges set, the int8 model is close to the float one.
    ref = keras.ops.convert_to_numpy(fresh_tiny(x))
    diff = np.abs(keras.ops.convert_to_numpy(q(x)) - ref)
    assert diff.mean() < 0.05 * np.abs(ref).mean(), (diff.mean(), np.abs(ref).mean())


@pytest.mark.backend_agnostic
def test_qat_fit_learns_ranges_and_masked_scores_stay_out_of_range(fresh_tiny):
    q = quantization.quantize_model(fresh_tiny)
    q.compile(keras.optimizers.Adam(1e-3), _loss())
    x = _tokens(16, 64)
    history = q.fit(x, np.roll(x, -1, axis=1), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    quantizers = dict(
        (f"{path}:{name}", quantizer)
        for path, state in state_lib.states(q)
        for name, quantizer in state.activation_quantizers()
    )
    out = quantizers["block_0_ln1:output:0"].observer
    assert int(keras.ops.convert_to_numpy(out.count)) == 4  # 2 epochs x 2 batches
    lo, hi = (float(v) for v in out.range())
    assert -6.0 < lo < 0.0 < hi < 6.0 and (lo, hi) != (-6.0, 6.0)
    # The causal mask's -1e9 fill never enters the softmax-input range.
    scores = quantizers["block_0_attention:attention:scores"]
    lo, hi = (float(v) for v in scores.observer.range())
    assert -50.0 < lo <= 0.0 <= hi < 50.0
    eff_lo, _ = (float(v) for v in scores.range())
    assert eff_lo == pytest.approx(lo - quantization.ATTENTION_MASK_MARGIN)


@pytest.mark.backend_agnostic
def test_default_8bit_weights_are_int8_per_output_channel(fresh_tiny):
    q = quantization.quantize_model(fresh_tiny)
    layer = q.get_layer("block_0_mlp_up")
    state = vars(layer)[state_lib.STATE_ATTR]
    w = keras.ops.convert_to_numpy(state.weights_q[0].value(False))
    scale = np.abs(w).max(axis=0) / 127.0
    codes = w / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert len(np.unique(scale)) > 1  # per channel


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "scheme, levels",
    [("4bit_weights", 15), ("4bit_weights_group32", 15), ("8bit_weights_16bit_activations", 255)],
)
def test_schemes_quantize_and_train(fresh_tiny, scheme, levels):
    q = quantization.quantize_model(fresh_tiny, scheme=scheme)
    assert q.quantize_report.scheme == scheme
    state = vars(q.get_layer("block_0_mlp_down"))[state_lib.STATE_ATTR]
    w = keras.ops.convert_to_numpy(state.weights_q[0].value(False))
    assert len(np.unique(w[:32, 0])) <= levels
    has_acts = any(s.activation_quantizers() for _, s in state_lib.states(q))
    assert has_acts == scheme.startswith("8bit")
    q.compile(keras.optimizers.Adam(1e-3), _loss())
    x = _tokens(8, 32)
    q.fit(x, x, batch_size=8, epochs=1, verbose=0)


def test_unknown_scheme_lists_accepted(fresh_tiny):
    with pytest.raises(ValueError, match="default_8bit.*scheme='int3'"):
        quantization.quantize_model(fresh_tiny, scheme="int3")


@keras.saving.register_keras_serializable(package="test_qat_model")
class Scale(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w


class ScaleConfig(quantization.QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return [("w", quantization.WeightQuantizer(num_bits=8, per_channel=False))]

    def get_output_quantizers(self, layer):
        return [quantization.ActivationQuantizer()]


def _custom_model(annotate=None):
    inputs = keras.Input((4,))
    scale = Scale(name="scale")
    if annotate is not None:
        scale = quantization.quantize_annotate_layer(scale, **annotate)
    h = scale(inputs)
    outputs = keras.layers.Dense(3, name="dense")(h)
    return keras.Model(inputs, outputs)


@pytest.mark.backend_agnostic
def test_layer_without_config_is_skipped_or_needs_a_config():
    q = quantization.quantize_model(_custom_model())
    assert q.quantize_report.quantized == ["dense"]
    assert "scale" in q.quantize_report.skipped
    assert "QuantizeConfig" in q.quantize_report.skipped["scale"]
    with pytest.raises(ValueError, match=r"Layer 'scale' \(Scale\).*quantize_config"):
        quantization.quantize_apply(_custom_model(annotate={}))
    q = quantization.quantize_apply(_custom_model(annotate={"quantize_config": ScaleConfig()}))
    assert q.quantize_report.quantized == ["scale"]
    y = keras.ops.convert_to_numpy(q(np.ones((2, 4), "float32")))
    assert y.shape == (2, 3)


def test_bad_inputs(fresh_tiny):
    with pytest.raises(TypeError, match="keras.Model"):
        quantization.quantize_model("gpt")
    with pytest.raises(ValueError, match="no annotated layers"):
        quantization.quantize_apply(fresh_tiny)
    with pytest.raises(TypeError, match="QuantizeConfig"):
        quantization.quantize_annotate_layer(keras.layers.Dense(2), quantize_config="int8")
    q = quantization.quantize_model(fresh_tiny)
    with pytest.raises(ValueError, match="already quantized"):
        quantization.quantize_model(q)


def test_save_weights_roundtrip_keeps_ranges(fresh_tiny, tmp_path):
    q = quantization.quantize_model(fresh_tiny)
    x = _tokens()
    quantization.calibrate(q, x, method="minmax")
    path = str(tmp_path / "q.weights.h5")
    q.save_weights(path)
    fresh = quantization.quantize_model(fresh_tiny)
    fresh.load_weights(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fresh(x)), keras.ops.convert_to_numpy(q(x)), atol=1e-6
    )


@pytest.mark.backend_agnostic
def test_strip_quantization_gives_plain_model_with_quantized_weights(fresh_tiny):
    q = quantization.quantize_model(fresh_tiny, scheme="4bit_weights")
    plain = quantization.strip_quantization(q)
    assert not state_lib.states(plain)
    x = _tokens()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), keras.ops.convert_to_numpy(q(x)), atol=1e-4
    )
    kernel = keras.ops.convert_to_numpy(plain.get_layer("block_0_mlp_up").kernel)
    assert max(len(np.unique(kernel[:, j])) for j in range(4)) <= 15
