import numpy as np
import pytest

from keras_llmopt import export
from tests.export.conftest import make_untrained_tiny


@pytest.mark.parametrize("approximate", [False, True])
def test_onnx_runs_exact_and_approximate_gelu(tmp_path, approximate):
    model = make_untrained_tiny(gelu_approximate=approximate)
    report = export.to_onnx(model, tmp_path / "m.onnx")
    assert report.verification.passed and report.verification.max_abs_error < 1e-4
    assert "Erfc" not in report.summary["ops"]
    if approximate:
        assert "Erf" not in report.summary["ops"] and report.notes == ()
    else:
        assert report.summary["ops"]["Erf"] == 2  # exact GELU, one per block
    # Dynamic batch: any number of rows runs in one call.
    tokens = np.random.default_rng(0).integers(0, 256, (3, 64)).astype(np.int32)
    np.testing.assert_allclose(
        export.load_runner(report.path)(tokens), np.asarray(model(tokens)), atol=1e-4
    )


def test_replace_erfc_alone_makes_the_graph_valid():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Erfc", ["x"], ["y"], name="erfc")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert export.replace_erfc(proto) == 1
    onnx.checker.check_model(proto, full_check=True)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([-1.0, 0.0, 2.0], np.float32)
    from math import erfc

    np.testing.assert_allclose(session.run(None, {"x": x})[0], [erfc(v) for v in x], atol=1e-6)


def test_saved_model_serves_any_length_and_matches(fresh_tiny, tmp_path):
    report = export.to_saved_model(fresh_tiny, tmp_path / "sm")
    assert report.verification.passed and report.size_bytes > 4 * fresh_tiny.count_params()
    runner = export.load_runner(report.path)
    assert runner.sequence_length is None  # the serving signature keeps dynamic lengths
    tokens = np.arange(20, dtype=np.int32).reshape(2, 10)
    np.testing.assert_allclose(runner(tokens), np.asarray(fresh_tiny(tokens)), atol=1e-5)


def test_onnx_keeps_model_constants_in_the_graph(tmp_path):
    """Position ids from ``keras.ops.arange`` are a constant, not a second graph input."""
    import keras
    import onnx

    keras.utils.set_random_seed(0)
    length = 16
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    positions = keras.ops.arange(length)
    x = keras.layers.Embedding(256, 16)(tokens) + keras.layers.Embedding(length, 16)(positions)
    model = keras.Model(tokens, keras.layers.Dense(256)(x))
    report = export.to_onnx(model, tmp_path / "m.onnx")
    assert report.verification.passed and report.verification.max_abs_error < 1e-5
    graph = onnx.load(report.path).graph
    initializers = {tensor.name for tensor in graph.initializer}
    assert [i.name for i in graph.input if i.name not in initializers] == ["tokens"]
    assert [o.name for o in graph.output] == ["output"]
    runner = export.load_runner(report.path)
    rows = np.random.default_rng(1).integers(0, 256, (3, length)).astype(np.int32)
    np.testing.assert_allclose(runner(rows), np.asarray(model(rows)), atol=1e-5)


def test_onnx_graph_inputs_must_be_the_models():
    from onnx import TensorProto, helper

    from keras_llmopt._src.export.onnx_export import check_graph_inputs

    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xcy"]
    add = helper.make_node("Add", ["x", "c"], ["y"])
    proto = helper.make_model(helper.make_graph([add], "g", values[:2], values[2:]))
    with pytest.raises(RuntimeError, match=r"inputs are \['x', 'c'\], not the model's inputs"):
        check_graph_inputs(proto, ("x",))
    check_graph_inputs(proto, ("x", "c"))
