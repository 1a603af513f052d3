import os

import numpy as np
import pytest

from keras_llmopt import export, reference


def test_fp32_holds_every_weight_and_matches_keras(fresh_tiny, tmp_path):
    report = export.to_tflite(fresh_tiny, tmp_path / "m.tflite")
    # The 45 KB bug: weights left as uninitialised resource variables. The weights must
    # be in the file (the converter dedups the untrained model's identical zero biases
    # and unit LayerNorm scales, so a fresh model's file is a bit under 4 bytes/param).
    assert report.size_bytes >= 0.6 * 4 * fresh_tiny.count_params()
    assert report.size_bytes < 4 * fresh_tiny.count_params() * 1.3
    assert "VAR_HANDLE" not in report.summary["ops"]
    assert report.summary["matmul_inputs"]["FULLY_CONNECTED"] == {"float32,float32": 13}
    assert report.summary["inputs"] == [("tokens", "int32", (1, 64))]
    v = report.verification
    assert v.passed and v.max_abs_error < 1e-4 and v.top1_agreement == 1.0
    # The runner adapts to the fixed (1, 64) artifact: several rows, shorter length.
    tokens = np.random.default_rng(1).integers(0, 256, (3, 40)).astype(np.int32)
    runner = export.load_runner(report.path)
    assert (runner.batch_size, runner.sequence_length) == (1, 64)
    expected = np.asarray(fresh_tiny(tokens))
    np.testing.assert_allclose(runner(tokens), expected, atol=1e-4)


@pytest.mark.parametrize(
    "mode, weight_dtypes, max_size_ratio",
    [
        ("float16", "float32,float32", 0.55),  # fp16 weights dequantized to fp32 kernels
        ("dynamic_int8", "float32,int8", 0.40),
        ("int8", "int8,int8", 0.40),
        ("int16x8", "int16,int8", 0.50),
    ],
)
def test_every_mode_on_fresh_tiny(
    fresh_tiny, tmp_path, mode, weight_dtypes, max_size_ratio, tiny_corpus
):
    fp32_bytes = 4 * fresh_tiny.count_params()
    calibration = tiny_corpus.train[:16] if mode in ("int8", "int16x8") else None
    report = export.to_tflite(
        fresh_tiny,
        tmp_path / f"{mode}.tflite",
        quantization=mode,
        representative_dataset=calibration,
        verify=mode not in ("int8", "int16x8"),
    )
    assert report.quantization == mode
    assert report.size_bytes < max_size_ratio * fp32_bytes
    assert report.summary["matmul_inputs"]["FULLY_CONNECTED"] == {weight_dtypes: 13}
    assert report.summary["inputs"][0][1] == "int32"  # token ids stay integers
    assert report.summary["output"][0] == "float32"
    # Whatever the mode, the artifact runs and the verification figures are finite.
    figures = export.verify(report.path, fresh_tiny, tiny_corpus.validation[:4, :-1], mode=mode)
    assert np.isfinite(figures.max_abs_error)
    if mode in ("float16", "dynamic_int8"):
        assert report.verification.passed and figures.top1_agreement > 0.9


def test_trained_tiny_fp32_and_dynamic_bits_per_byte(trained_tiny, tiny_corpus, windows, tmp_path):
    data = (windows[:, :-1], windows[:, 1:])
    fp32 = export.to_tflite(trained_tiny, tmp_path / "fp32.tflite", verification_data=data)
    dyn = export.to_tflite(
        trained_tiny, tmp_path / "dyn.tflite", quantization="dynamic_int8", verification_data=data
    )
    assert fp32.size_bytes >= 4 * trained_tiny.count_params()  # every weight is in the file
    assert abs(fp32.verification.bpb_delta) < 1e-4
    assert abs(dyn.verification.bpb_delta) < 0.03
    assert dyn.size_bytes < 0.4 * fp32.size_bytes
    # evaluate() measures artifacts the same way as Keras models.
    keras_bpb = reference.evaluate(trained_tiny, tiny_corpus, num_windows=8).bpb
    tflite_bpb = reference.evaluate(fp32.path, tiny_corpus, num_windows=8).bpb
    assert tflite_bpb == pytest.approx(keras_bpb, abs=1e-4)


def test_integer_modes_keep_the_trained_model_and_damage_is_caught(
    trained_tiny, tiny_corpus, windows, tmp_path
):
    data = (windows[:, :-1], windows[:, 1:])
    calibration = tiny_corpus.train[:32]
    # int16x8 works at all only thanks to the graph rewrites (token-id wrap, LayerNorm's
    # SquaredDifference, attention-mask fill), and then it is close to float.
    int16 = export.to_tflite(
        trained_tiny,
        tmp_path / "int16.tflite",
        quantization="int16x8",
        representative_dataset=calibration,
        verification_data=data,
    )
    assert int16.summary["matmul_inputs"]["FULLY_CONNECTED"] == {"int16,int8": 13}
    assert int16.verification.top1_agreement > 0.97
    assert abs(int16.verification.bpb_delta) < 0.01
    assert any("attention-mask fill" in note for note in int16.notes)
    # Post-training full-integer int8 loses more; a strict tolerance must refuse it and
    # say by how much, leaving no file behind.
    path = tmp_path / "int8.tflite"
    with pytest.raises(export.VerificationError, match=r"top-1 agreement .*short by .*bits per"):
        export.to_tflite(
            trained_tiny,
            path,
            quantization="int8",
            representative_dataset=calibration,
            verification_data=data,
            tolerance={"top1": 0.97, "bpb": 0.005},
        )
    assert sorted(os.listdir(tmp_path)) == ["int16.tflite"]
    # Accepted knowingly with a loose tolerance, the figures are in the report.
    report = export.to_tflite(
        trained_tiny,
        path,
        quantization="int8",
        representative_dataset=calibration,
        verification_data=data,
        tolerance={"top1": 0.5, "bpb": 0.5},
    )
    assert path.exists() and report.verification.bpb_delta > 0.005


def test_sparse_encoding_is_smaller_with_same_outputs(tmp_path):
    from tests.export.conftest import make_untrained_tiny

    model = make_untrained_tiny()
    # A pruned-then-stripped model: 80% of every Dense/EinsumDense kernel is zero.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if hasattr(layer, "kernel") and layer.kernel is not None:
            kernel = np.asarray(layer.kernel)
            threshold = np.quantile(np.abs(kernel), 0.8)
            layer.kernel.assign(np.where(np.abs(kernel) < threshold, 0.0, kernel))
    dense = export.to_tflite(model, tmp_path / "dense.tflite")
    sparse = export.to_tflite(model, tmp_path / "sparse.tflite", sparse=True)
    assert sparse.summary["sparse_tensors"] > 0 and dense.summary["sparse_tensors"] == 0
    assert sparse.size_bytes < 0.7 * dense.size_bytes
    assert sparse.verification.max_abs_error < 1e-4
    dense_int8 = export.to_tflite(model, tmp_path / "d8.tflite", quantization="dynamic_int8")
    sparse_int8 = export.to_tflite(
        model, tmp_path / "s8.tflite", quantization="dynamic_int8", sparse=True
    )
    assert sparse_int8.size_bytes < dense_int8.size_bytes
    # XNNPACK refuses sparse int8 FULLY_CONNECTED: the user is told, and it still runs.
    assert dense_int8.summary["xnnpack"] and not sparse_int8.summary["xnnpack"]
    assert any("XNNPACK" in note for note in sparse_int8.notes)
    assert sparse_int8.verification.passed
    tokens = np.arange(64, dtype=np.int32)[None] % 256
    np.testing.assert_allclose(
        export.load_runner(sparse.path)(tokens), export.load_runner(dense.path)(tokens), atol=1e-5
    )


def test_int8_from_a_qat_model_uses_learned_ranges_without_data(tmp_path):
    import keras
    import tensorflow as tf

    class FakeQuant(keras.layers.Layer):  # stands in for a QAT activation quantizer
        def build(self, shape):
            init = keras.initializers.Constant
            self.low = self.add_weight(shape=(), initializer=init(-4.0), trainable=False)
            self.high = self.add_weight(shape=(), initializer=init(4.0), trainable=False)

        def call(self, x):
            return tf.quantization.fake_quant_with_min_max_vars(x, self.low, self.high)

    class FakeQuantDense(keras.layers.Dense):
        def call(self, x):
            k = self.kernel
            k = tf.quantization.fake_quant_with_min_max_vars(
                k, tf.reduce_min(k), tf.reduce_max(k), narrow_range=True
            )
            return x @ k + self.bias

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="features")
    x = FakeQuant()(inputs)
    x = FakeQuant()(FakeQuantDense(16, activation="relu")(x))
    outputs = FakeQuant()(FakeQuantDense(4)(x))
    model = keras.Model(inputs, outputs)
    report = export.to_tflite(
        model,
        tmp_path / "qat.tflite",
        quantization="int8",
        tolerance={"atol": 0.05, "rtol": 0.0, "top1": 0.9},
    )
    assert report.summary["matmul_inputs"]["FULLY_CONNECTED"] == {"int8,int8": 2}
    assert any("QAT" in note for note in report.notes)
    assert report.verification.max_abs_error <= 0.05


def test_verify_reports_bits_per_byte_of_the_artifact(trained_tiny, windows, tmp_path):
    path = export.to_tflite(trained_tiny, tmp_path / "m.tflite", quantization="float16").path
    report = export.verify(path, trained_tiny, windows[:, :-1], windows[:, 1:], mode="float16")
    keras_logits = np.asarray(trained_tiny(windows[:, :-1]))
    # The model's own figure is the cross-entropy of its logits, in bits.
    shifted = keras_logits - keras_logits.max(-1, keepdims=True)
    nll = (
        np.log(np.exp(shifted).sum(-1))
        - np.take_along_axis(shifted, windows[:, 1:, None].astype(np.int64), -1)[..., 0]
    )
    assert report.bpb_model == pytest.approx(nll.mean() / np.log(2), rel=1e-5)
    assert report.passed and abs(report.bpb_delta) < 0.01
    assert report.num_positions == windows[:, :-1].size
    assert report.to_dict()["passed"] is True
