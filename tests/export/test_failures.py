import os

import numpy as np
import pytest

from keras_llmopt import export


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantization": "int2"}, r"Received: quantization='int2'; accepted: \[None, 'float16'"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"sequence_length": -3}, "Received: sequence_length=-3"),
        ({"quantization": "int8"}, "needs calibration: pass representative_dataset"),
        ({"representative_dataset": np.zeros((4, 64))}, "only used by quantization='int8'"),
        ({"tolerance": {"max_err": 1.0}}, r"Unknown tolerance keys \['max_err'\]"),
    ],
)
def test_bad_arguments_raise_value_error(fresh_tiny, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export.to_tflite(fresh_tiny, tmp_path / "m.tflite", **kwargs)
    assert os.listdir(tmp_path) == []


def test_bad_types_and_onnx_opset(fresh_tiny, tmp_path):
    with pytest.raises(TypeError, match="Received: sparse='yes'"):
        export.to_tflite(fresh_tiny, tmp_path / "m.tflite", sparse="yes")
    with pytest.raises(TypeError, match="expects a keras.Model"):
        export.to_tflite("model.keras", tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="Received: opset=7; accepted: an int from 13 to 18"):
        export.to_onnx(fresh_tiny, tmp_path / "m.onnx", opset=7)
    with pytest.raises(ValueError, match="accepted: a .tflite or .onnx file"):
        export.load_runner(__file__)
    assert os.listdir(tmp_path) == []


def test_failed_verification_keeps_existing_file_and_leaves_no_temp(fresh_tiny, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"previous artifact")
    # An impossible tolerance stands in for a broken conversion.
    with pytest.raises(export.VerificationError, match=r"max abs error .* allowed \(by ") as info:
        export.to_tflite(
            fresh_tiny,
            path,
            tolerance={"atol": 0.0, "rtol": 0.0},
            verification_data=np.ones((1, 64), np.int32) * 7,
        )
    assert info.value.report.max_abs_error > 0
    assert path.read_bytes() == b"previous artifact"
    assert os.listdir(tmp_path) == ["m.tflite"]
    with pytest.raises(export.VerificationError):
        export.to_onnx(fresh_tiny, tmp_path / "m.onnx", tolerance={"atol": 0.0, "rtol": 0.0})
    with pytest.raises(export.VerificationError):
        export.to_saved_model(fresh_tiny, tmp_path / "sm", tolerance={"atol": -1.0, "rtol": 0.0})
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_success_replaces_existing_file(fresh_tiny, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    report = export.to_tflite(fresh_tiny, path, quantization="float16")
    assert path.read_bytes()[4:8] == b"TFL3" and report.size_bytes == path.stat().st_size
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_model_is_not_mutated(fresh_tiny, tmp_path):
    before = [np.array(w) for w in fresh_tiny.get_weights()]
    export.to_tflite(fresh_tiny, tmp_path / "m.tflite", quantization="dynamic_int8")
    for a, b in zip(before, fresh_tiny.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_export_refuses_other_backends_clearly(fresh_tiny, tmp_path, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="needs the TensorFlow backend.*Received: backend='jax'"):
        export.to_tflite(fresh_tiny, tmp_path / "m.tflite")


def test_fixed_length_model_rejects_other_sequence_length(tmp_path):
    import keras

    inputs = keras.Input((8,), dtype="int32", name="tokens")
    model = keras.Model(inputs, keras.layers.Embedding(10, 4)(inputs))
    with pytest.raises(ValueError, match="fixed length 8. Received: sequence_length=16"):
        export.to_tflite(model, tmp_path / "m.tflite", sequence_length=16)
    assert export.to_tflite(model, tmp_path / "m.tflite").summary["inputs"][0][2] == (1, 8)


class _Subclassed:
    """A subclassed token model (built lazily, so tests can leave it unbuilt)."""

    @staticmethod
    def make(name="subclassed"):
        import keras

        class TokenModel(keras.Model):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.embedding = keras.layers.Embedding(256, 16)
                self.head = keras.layers.Dense(256)

            def call(self, tokens):
                return self.head(self.embedding(tokens))

        return TokenModel(name=name)


@pytest.mark.parametrize("kind", ["subclassed", "sequential"])
@pytest.mark.parametrize(
    "exporter, target",
    [(export.to_tflite, "m.tflite"), (export.to_onnx, "m.onnx"), (export.to_saved_model, "sm")],
)
def test_unbuilt_model_is_refused_before_any_work(tmp_path, kind, exporter, target):
    import keras

    if kind == "subclassed":
        model = _Subclassed.make("never_called")
    else:
        model = keras.Sequential(
            [keras.layers.Embedding(256, 16), keras.layers.Dense(256)], name="never_called"
        )
    message = r"model 'never_called' is not built.*call it once.*Received: .*model.built=False"
    with pytest.raises(ValueError, match=message):
        exporter(model, tmp_path / target, sequence_length=8)
    assert not model.built and model.weights == []  # the refusal did not build it
    assert os.listdir(tmp_path) == []
    model(np.zeros((1, 8), np.int32))  # once built, the same call exports
    assert exporter(model, tmp_path / target, sequence_length=8).verification.passed


def _unnamed_positions_model():
    """A built subclassed GPT-like model whose position table has no telling name."""
    import keras

    class Positions(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tokens = keras.layers.Embedding(256, 16)
            self.wpe = keras.layers.Embedding(32, 16)
            self.head = keras.layers.Dense(256)

        def call(self, tokens):
            positions = keras.ops.arange(keras.ops.shape(tokens)[1])
            return self.head(self.tokens(tokens) + self.wpe(positions))

    model = Positions(name="unnamed_positions")
    model(np.zeros((1, 4), np.int32))
    return model


@pytest.mark.parametrize("which", ["reference", "kerashub_gpt2", "unnamed_positions"])
@pytest.mark.parametrize(
    "exporter, target",
    [(export.to_tflite, "m.tflite"), (export.to_onnx, "m.onnx"), (export.to_saved_model, "sm")],
)
def test_sequence_length_past_the_maximum_is_refused_before_conversion(
    tmp_path, monkeypatch, tiny_gpt2_lm, which, exporter, target
):
    from keras_llmopt._src.export import converter, signature

    if which == "reference":
        from keras_llmopt import reference

        model, limit = reference.build_gpt("tiny"), 64
    elif which == "kerashub_gpt2":
        model, limit = tiny_gpt2_lm().backbone, 32
    else:
        model, limit = _unnamed_positions_model(), 32

    def no_tracing(*args, **kwargs):
        raise AssertionError("the model was traced")

    monkeypatch.setattr(converter, "trace", no_tracing)
    monkeypatch.setattr(signature, "serving_function", no_tracing)
    message = (
        rf"longer than model '{model.name}' accepts. Received: sequence_length={2 * limit}; "
        rf"accepted: at most {limit} \(the model's "
    )
    with pytest.raises(ValueError, match=message):
        exporter(model, tmp_path / target, sequence_length=2 * limit)
    assert os.listdir(tmp_path) == []


def test_artifacts_get_the_permissions_of_a_file_written_in_place(fresh_tiny, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    report = export.to_tflite(fresh_tiny, tmp_path / "m.tflite", sequence_length=8)
    assert os.stat(report.path).st_mode & 0o777 == 0o666 & ~umask
    folder = export.to_saved_model(fresh_tiny, tmp_path / "sm", sequence_length=8)
    assert os.stat(folder.path).st_mode & 0o777 == 0o777 & ~umask
