"""Full-integer int8 for any decoder: every matmul input int8, or a refusal naming it."""

import keras
import numpy as np
import pytest

from keras_llmopt import export, quantization

keras_hub = pytest.importorskip("keras_hub")

VOCAB, LENGTH = 256, 16


def _tiny(backbone_class, causal_lm_class, **config):
    keras.utils.set_random_seed(0)
    backbone = backbone_class(vocabulary_size=VOCAB, num_layers=2, hidden_dim=64, **config)
    return causal_lm_class(backbone=backbone, preprocessor=None)


def _llama():
    return _tiny(
        keras_hub.models.LlamaBackbone,
        keras_hub.models.LlamaCausalLM,
        num_query_heads=4,
        num_key_value_heads=2,
        intermediate_dim=128,
    )


def _gemma():
    return _tiny(
        keras_hub.models.GemmaBackbone,
        keras_hub.models.GemmaCausalLM,
        num_query_heads=4,
        num_key_value_heads=2,
        intermediate_dim=128,
        head_dim=16,
    )


def _gemma2():
    # Gemma 2's flags: logit soft caps (the head's cap comes after its matmul's range),
    # post-attention and post-MLP norms.
    return _tiny(
        keras_hub.models.GemmaBackbone,
        keras_hub.models.GemmaCausalLM,
        num_query_heads=4,
        num_key_value_heads=2,
        intermediate_dim=128,
        head_dim=16,
        query_head_dim_normalize=False,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        final_logit_soft_cap=30.0,
        attention_logit_soft_cap=50.0,
    )


def _qwen3():
    return _tiny(
        keras_hub.models.Qwen3Backbone,
        keras_hub.models.Qwen3CausalLM,
        num_query_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_dim=128,
    )


def _mistral():
    return _tiny(
        keras_hub.models.MistralBackbone,
        keras_hub.models.MistralCausalLM,
        num_query_heads=4,
        num_key_value_heads=2,
        intermediate_dim=128,
        sliding_window=LENGTH,
    )


def relu_gpt(vocab=VOCAB, length=LENGTH, dim=32):
    """A functional GPT whose MLP has a separate ``Activation("relu")`` layer."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab, dim, name="token_embedding")(tokens)
    positions = keras.layers.Embedding(length, dim, name="position_embedding")(
        keras.ops.arange(length)
    )
    x = x + positions
    for i in range(2):
        h = keras.layers.LayerNormalization(name=f"block_{i}_ln_1")(x)
        h = keras.layers.MultiHeadAttention(2, dim // 2, name=f"block_{i}_attention")(
            h, h, use_causal_mask=True
        )
        x = keras.layers.Add(name=f"block_{i}_add_1")([x, h])
        h = keras.layers.LayerNormalization(name=f"block_{i}_ln_2")(x)
        h = keras.layers.Dense(4 * dim, name=f"block_{i}_mlp_up")(h)
        h = keras.layers.Activation("relu", name=f"block_{i}_relu")(h)
        h = keras.layers.Dense(dim, name=f"block_{i}_mlp_down")(h)
        x = keras.layers.Add(name=f"block_{i}_add_2")([x, h])
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    return keras.Model(tokens, keras.layers.Dense(vocab, name="lm_head")(x), name="relu_gpt")


def _batch(model, rows=16):
    tokens = np.random.default_rng(1).integers(0, VOCAB, (rows, LENGTH)).astype("int32")
    if isinstance(model.input, dict):
        return {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    return tokens


def _qat(model):
    q = quantization.quantize_model(model)
    quantization.calibrate(q, _batch(model), batch_size=8)
    return q


def _all_int8(summary):
    dtypes = {
        d
        for op in ("FULLY_CONNECTED", "BATCH_MATMUL")
        for d in summary["matmul_inputs"].get(op, {})
    }
    return dtypes == {"int8,int8"}


@pytest.mark.parametrize(
    "build",
    [_llama, _gemma, _gemma2, _qwen3, _mistral, relu_gpt],
    ids=["llama", "gemma", "gemma2", "qwen3", "mistral", "relu_gpt"],
)
def test_every_matmul_input_is_int8_and_the_file_agrees(build, tmp_path):
    model = build()
    q = _qat(model)
    report = export.to_tflite(q, tmp_path / "m.tflite", quantization="int8", sequence_length=LENGTH)
    counts = report.summary["matmul_inputs"]
    assert counts["FULLY_CONNECTED"] and counts["BATCH_MATMUL"], counts
    assert _all_int8(report.summary), counts
    assert report.summary["float_matmuls"] == []
    assert report.verification.passed and report.verification.top1_agreement >= 0.9
    # Smaller than the float file (int8 weights; the graph itself is a fixed cost).
    fp32 = export.to_tflite(model, tmp_path / "f.tflite", sequence_length=LENGTH, verify=False)
    assert report.size_bytes < 0.65 * fp32.size_bytes, (report.size_bytes, fp32.size_bytes)


@pytest.mark.parametrize("build", [_llama, _gemma], ids=["llama", "gemma"])
def test_calibrated_int16x8_on_keras_hub_has_int16_matmuls_and_agrees(build, tmp_path):
    # KerasHub's padding/causal mask compares int32 tensors; the 16x8 quantizer wants a
    # calibrated range for every comparison input ("Max and min for dynamic tensors").
    model = build()
    report = export.to_tflite(
        model,
        tmp_path / "m.tflite",
        quantization="int16x8",
        representative_dataset=_batch(model),
        sequence_length=LENGTH,
    )
    counts = report.summary["matmul_inputs"]
    assert counts["FULLY_CONNECTED"] and counts["BATCH_MATMUL"], counts
    # int16 activations; weights int8 (a tied head reads the int16 embedding table).
    kinds = {kind for op in ("FULLY_CONNECTED", "BATCH_MATMUL") for kind in counts[op]}
    assert kinds <= {"int16,int8", "int16,int16"}, counts
    assert report.summary["float_matmuls"] == []
    assert report.verification.passed and report.verification.top1_agreement >= 0.95


def test_qat_int16x8_on_grouped_query_attention_says_what_to_do_instead(tmp_path):
    q = quantization.quantize_model(_llama(), scheme="8bit_weights_16bit_activations")
    quantization.calibrate(q, _batch(q), batch_size=8)
    with pytest.raises(
        RuntimeError, match=r"(?s)no int16 TILE.*representative_dataset=.*tfl\.tile"
    ):
        export.to_tflite(q, tmp_path / "m.tflite", quantization="int16x8", sequence_length=LENGTH)
    assert list(tmp_path.iterdir()) == []


def test_llama_head_and_inline_attention_are_planned():
    q = quantization.quantize_model(_llama())
    quantized = {path.split("/", 1)[1] for path in q.quantize_report.quantized}
    # The attention layer itself (its query-key and probabilities-value einsums) and
    # the RMSNorm (its output feeds q/k/v) are quantized, not only the projections.
    assert "transformer_layer_0/self_attention" in quantized
    assert "transformer_layer_0/self_attention_layernorm" in quantized
    assert not q.quantize_report.skipped


def test_strict_int8_refuses_a_float_matmul_naming_its_layer(tmp_path):
    q = quantization.quantize_model(relu_gpt(), ignore=["lm_head"])
    quantization.calibrate(q, _batch(q), batch_size=8)
    path = tmp_path / "m.tflite"
    with pytest.raises(
        ValueError, match=r"(?s)FULLY_CONNECTED at '[^']*lm_head'.*allow_float_ops=True"
    ):
        export.to_tflite(q, path, quantization="int8")
    assert list(tmp_path.iterdir()) == []  # nothing half-written

    report = export.to_tflite(q, path, quantization="int8", allow_float_ops=True)
    assert path.exists() and report.verification.passed
    (listed,) = report.summary["float_matmuls"]
    assert "lm_head" in listed and "float32" in listed
    assert any("allow_float_ops=True" in note for note in report.notes)


def test_allow_float_ops_is_checked():
    with pytest.raises(TypeError, match="allow_float_ops"):
        export.to_tflite(relu_gpt(), "unused.tflite", allow_float_ops="yes")


def test_planned_placement_survives_save_and_load(tmp_path):
    q = _qat(_llama())
    q.save(tmp_path / "q.keras")
    with quantization.quantize_scope():
        loaded = keras.models.load_model(tmp_path / "q.keras")
    batch = _batch(q, rows=2)
    np.testing.assert_allclose(np.asarray(loaded(batch)), np.asarray(q(batch)), atol=1e-5)
    report = export.to_tflite(
        loaded, tmp_path / "m.tflite", quantization="int8", sequence_length=LENGTH
    )
    assert _all_int8(report.summary)
