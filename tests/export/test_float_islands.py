"""int8 SOFTMAX / GELU run in float32 inside XNNPACK; the matmuls stay int8."""

import numpy as np
import pytest

from keras_llmopt import export, quantization, reference
from keras_llmopt._src.export.float_islands import run_in_float
from keras_llmopt._src.export.runtime import load_runner

LENGTH = 32


@pytest.fixture(scope="module")
def qat_gpt():
    model = reference.build_gpt("tiny", seed=0)
    q = quantization.quantize_model(model)
    tokens = np.random.default_rng(0).integers(0, 256, (16, LENGTH)).astype("int32")
    quantization.calibrate(q, tokens, batch_size=8)
    return q


def _int8_ops(summary, name):
    return sum(n for op, n in summary["xnnpack_fallback_ops"].items() if op == f"{name}(int8)")


def test_int8_softmax_and_gelu_leave_the_fallback_list_and_matmuls_stay_int8(qat_gpt, tmp_path):
    islands = export.to_tflite(qat_gpt, tmp_path / "a.tflite", quantization="int8")
    integer = export.to_tflite(
        qat_gpt, tmp_path / "b.tflite", quantization="int8", integer_only=True
    )
    layers = reference.GPTConfig.preset("tiny").num_layers
    assert _int8_ops(integer.summary, "SOFTMAX") == layers
    assert _int8_ops(integer.summary, "GELU") == layers
    assert _int8_ops(islands.summary, "SOFTMAX") == 0
    assert _int8_ops(islands.summary, "GELU") == 0
    # ... and XNNPACK runs their float32 form (the fallback list is read at run time).
    assert not any(
        op.startswith(("SOFTMAX", "GELU", "DEQUANTIZE", "QUANTIZE"))
        for op in islands.summary["xnnpack_fallback_ops"]
    ), islands.summary["xnnpack_fallback_ops"]
    assert islands.summary["ops"]["QUANTIZE"] == integer.summary["ops"]["QUANTIZE"] + 2 * layers
    for report in (islands, integer):
        kinds = {
            k
            for op in ("FULLY_CONNECTED", "BATCH_MATMUL")
            for k in report.summary["matmul_inputs"][op]
        }
        assert kinds == {"int8,int8"}
        assert report.verification.passed
    assert any("integer_only=True" in note for note in islands.notes)
    # Same codes up to float rounding instead of the integer kernels' lookup tables.
    a, b = load_runner(tmp_path / "a.tflite"), load_runner(tmp_path / "b.tflite")
    feeds = a.example_inputs()
    ya, yb = np.asarray(a._run_batch(feeds)), np.asarray(b._run_batch(feeds))
    assert (ya.argmax(-1) == yb.argmax(-1)).mean() >= 0.95
    assert np.abs(ya - yb).max() <= 0.1 * np.abs(yb).max()


def test_a_float_file_is_returned_unchanged(tmp_path):
    path = tmp_path / "f.tflite"
    export.to_tflite(reference.build_gpt("tiny", seed=0), path, verify=False)
    content = path.read_bytes()
    rewritten, count = run_in_float(content)
    assert count == 0 and rewritten == content


def test_integer_only_is_checked():
    with pytest.raises(TypeError, match="integer_only"):
        export.to_tflite(reference.build_gpt("tiny"), "unused.tflite", integer_only=1)
