import os

import numpy as np
import pytest

from keras_llmopt import export
from keras_llmopt._src.export import runtime


@pytest.fixture
def parsed_flags():
    from absl import flags

    from keras_llmopt._src.cli import export_cmd  # noqa: F401  (defines the export_ flags)

    def parse(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["keras-llmopt export", *args])

    yield parse
    flags.FLAGS.unparse_flags()


def test_cli_export_dynamic_int8_and_onnx(trained_tiny, tmp_path, parsed_flags, capsys):
    from keras_llmopt._src.cli import export_cmd

    saved = tmp_path / "gpt.keras"
    trained_tiny.save(saved)
    out = tmp_path / "gpt.tflite"
    parsed_flags(
        f"--model={saved}",
        f"--out={out}",
        "--export_quantization=dynamic_int8",
        "--export_verify_windows=8",
    )
    report = export_cmd.run([])
    assert out.exists() and report.quantization == "dynamic_int8"
    assert report.verification.bpb_artifact is not None  # verified on validation windows
    assert "dynamic_int8" in capsys.readouterr().out
    parsed_flags(f"--model={saved}", f"--out={tmp_path / 'gpt.onnx'}", "--export_verify_windows=4")
    assert export_cmd.run([]).format == "onnx"
    parsed_flags(f"--model={saved}", f"--out={tmp_path / 'x.onnx'}", "--export_sparse")
    with pytest.raises(ValueError, match="apply to TFLite only"):
        export_cmd.run([])
    assert sorted(os.listdir(tmp_path)) == ["gpt.keras", "gpt.onnx", "gpt.tflite"]


@pytest.mark.backend_agnostic
def test_runner_pads_and_loops_on_any_backend(tmp_path):
    # A tiny TFLite artifact written from raw TensorFlow (no Keras), so this runs on JAX.
    import tensorflow as tf

    table = np.arange(12, dtype=np.float32).reshape(6, 2)

    @tf.function(input_signature=[tf.TensorSpec((2, 4), tf.int32, name="tokens")])
    def f(tokens):
        return tf.gather(tf.constant(table), tokens) * 2.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], None)
    path = tmp_path / "t.tflite"
    path.write_bytes(converter.convert())
    runner = export.load_runner(path, num_threads=1)
    assert (runner.batch_size, runner.sequence_length) == (2, 4)
    tokens = np.array([[1, 2, 3], [0, 5, 4], [2, 2, 2]], np.int32)  # 3 rows, length 3
    np.testing.assert_allclose(runner(tokens), table[tokens] * 2.0)
    with pytest.raises(ValueError, match="longer than the artifact's fixed sequence_length=4"):
        runner(np.zeros((1, 5), np.int32))
    zeros = np.zeros((2, 4), np.int32)
    assert runtime.measure_latency(path, num_threads=1, warmup=1, repeats=3, inputs=zeros) > 0
    with pytest.raises(ValueError, match="Received: repeats=0"):
        runtime.measure_latency(path, repeats=0)
