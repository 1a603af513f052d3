"""QAT models to full-integer TFLite (TensorFlow backend: export is TensorFlow's job)."""

import keras
import numpy as np
import pytest

from keras_llmopt import export, quantization, reference, sparsity


def _finetune(model, corpus, steps=12, batch_size=8, lr=1e-4):
    x, y = reference.make_batches(corpus.train, batch_size, steps, seed=1)
    model.compile(
        keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, batch_size=batch_size, shuffle=False, verbose=0)
    return model


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter


def _tensor_details(path):
    interpreter = _interpreter(path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return interpreter._get_ops_details(), tensors


@pytest.fixture(scope="module")
def qat_tiny(trained_tiny, tiny_corpus):
    return _finetune(quantization.quantize_model(trained_tiny), tiny_corpus)


def test_qat_gpt_exports_full_integer_and_agrees(qat_tiny, trained_tiny, tiny_corpus, tmp_path):
    path = tmp_path / "qat.tflite"
    report = export.to_tflite(qat_tiny, path, quantization="int8")  # verified by default
    assert report.verification.top1_agreement >= 0.9
    ops, tensors = _tensor_details(path)
    matmuls = [op for op in ops if op["op_name"] in ("FULLY_CONNECTED", "BATCH_MATMUL")]
    assert {op["op_name"] for op in matmuls} == {"FULLY_CONNECTED", "BATCH_MATMUL"}
    for op in matmuls:
        dtypes = [tensors[i]["dtype"].__name__ for i in op["inputs"][:2]]
        assert dtypes == ["int8", "int8"], (op["op_name"], dtypes)
    kernels = [tensors[op["inputs"][1]] for op in ops if op["op_name"] == "FULLY_CONNECTED"]
    assert all(k["quantization_parameters"]["scales"].size > 1 for k in kernels)  # per channel
    assert report.summary["inputs"][0][1] == "int32"  # token ids stay integers
    # Every matmul runs in XNNPACK (an int8 BATCH_MATMUL whose right-hand operand has a
    # non-zero zero point falls back to a builtin kernel ~20x slower).
    for op in ops:
        if op["op_name"] == "BATCH_MATMUL":
            assert tensors[op["inputs"][1]]["quantization"][1] == 0, op
    fallback = report.summary["xnnpack_fallback_ops"]
    assert not [k for k in fallback if k.startswith(("BATCH_MATMUL", "FULLY_CONNECTED"))], fallback
    # SOFTMAX computes in float32 inside XNNPACK (export/float_islands.py): its input
    # is the DEQUANTIZE of the int8 scores.
    dequantized = {op["outputs"][0]: op["inputs"][0] for op in ops if op["op_name"] == "DEQUANTIZE"}
    softmax_in = [tensors[dequantized[op["inputs"][0]]] for op in ops if op["op_name"] == "SOFTMAX"]
    assert softmax_in
    for t in softmax_in:  # the mask fill did not blow up the int8 step
        assert t["dtype"].__name__ == "int8" and t["quantization"][0] < 0.5
    # The artifact scores (almost) like the Keras QAT model.
    keras_bpb = reference.evaluate(qat_tiny, tiny_corpus, num_windows=16).bpb
    tflite_bpb = reference.evaluate(str(path), tiny_corpus, num_windows=16).bpb
    assert abs(tflite_bpb - keras_bpb) < 0.02, (keras_bpb, tflite_bpb)
    float_size = export.to_tflite(trained_tiny, tmp_path / "f.tflite", verify=False).size_bytes
    assert report.size_bytes < 0.5 * float_size


def test_kerashub_causal_lm_qat_exports_int8(tiny_gpt2_lm, tmp_path):
    lm = tiny_gpt2_lm()
    q = quantization.quantize_model(lm)
    # Keras numbers auto-generated names per process, so match the path's tail.
    quantized = q.quantize_report.quantized
    assert not q.quantize_report.skipped, q.quantize_report.skipped
    assert any(p.endswith("/position_embedding") for p in quantized), quantized
    assert any(p.endswith("self_attention") for p in quantized), quantized
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(0, 256, (8, 16)).astype("int32"),
        "padding_mask": np.ones((8, 16), "int32"),
    }
    q.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    q.fit(x, rng.integers(0, 256, (8, 16)), batch_size=8, verbose=0)
    report = export.to_tflite(q, tmp_path / "hub.tflite", quantization="int8", sequence_length=16)
    matmuls = report.summary["matmul_inputs"]
    assert set(matmuls) == {"FULLY_CONNECTED", "BATCH_MATMUL"}
    assert all(set(kinds) == {"int8,int8"} for kinds in matmuls.values()), matmuls
    fallback = report.summary["xnnpack_fallback_ops"]
    assert not [k for k in fallback if k.startswith(("BATCH_MATMUL", "FULLY_CONNECTED"))], fallback


def test_pruned_model_keeps_zeros_through_qat_and_export(trained_tiny, tiny_corpus, tmp_path):
    pruned = sparsity.prune_low_magnitude(trained_tiny, sparsity.ConstantSparsity(0.5, 0))
    x, y = reference.make_batches(tiny_corpus.train, 8, 1, seed=0)
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    # Still wrapped: quantize_model strips the pruning itself and keeps its zeros.
    q = _finetune(quantization.quantize_model(pruned), tiny_corpus, steps=6, lr=1e-3)
    layer = q.get_layer("block_0_mlp_up")
    zeros = keras.ops.convert_to_numpy(stripped.get_layer("block_0_mlp_up").kernel) == 0
    assert zeros.mean() == pytest.approx(0.5, abs=0.01)
    from keras_llmopt._src.quantization.state import STATE_ATTR

    effective = keras.ops.convert_to_numpy(vars(layer)[STATE_ATTR].weights_q[0].variable_value())
    assert np.all(effective[zeros] == 0.0)
    assert np.count_nonzero(effective[~zeros]) > 0.99 * (~zeros).sum()
    path = tmp_path / "pqat.tflite"
    export.to_tflite(q, path, quantization="int8")
    ops, tensors = _tensor_details(path)
    interpreter = _interpreter(path)
    kernels = [
        interpreter.get_tensor(op["inputs"][1]) for op in ops if op["op_name"] == "FULLY_CONNECTED"
    ]
    sparse = [k for k in kernels if (k == 0).mean() >= 0.5]
    # 2 blocks x (q, k, v, o, mlp_up, mlp_down) were pruned; lm_head was not.
    assert len(sparse) == 12 and len(kernels) == 13, [(k == 0).mean() for k in kernels]


def test_16x8_qat_gpt_exports_int16_activations_and_agrees(trained_tiny, tiny_corpus, tmp_path):
    q = _finetune(
        quantization.quantize_model(trained_tiny, scheme="8bit_weights_16bit_activations"),
        tiny_corpus,
        steps=6,
    )
    path = tmp_path / "qat16.tflite"
    report = export.to_tflite(q, path, quantization="int16x8")  # verified by default
    assert report.verification.top1_agreement >= 0.95
    ops, tensors = _tensor_details(path)
    kinds = {}
    for op in ops:
        if op["op_name"] in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            dtypes = tuple(tensors[i]["dtype"].__name__ for i in op["inputs"][:2])
            kinds.setdefault(op["op_name"], []).append(dtypes)
    # Attention scores and values multiply int16 x int16; the projections are int16 x
    # int8 except the GELU layers (no int16 GELU kernel: computed in float).
    assert set(kinds["BATCH_MATMUL"]) == {("int16", "int16")}, kinds
    fully_connected = kinds["FULLY_CONNECTED"]
    assert fully_connected.count(("int16", "int8")) == len(fully_connected) - 2, kinds
    # The artifact scores like the Keras model.
    keras_bpb = reference.evaluate(q, tiny_corpus, num_windows=16).bpb
    tflite_bpb = reference.evaluate(str(path), tiny_corpus, num_windows=16).bpb
    assert abs(tflite_bpb - keras_bpb) < 0.01, (keras_bpb, tflite_bpb)


def test_attention_query_scale_is_folded_into_the_query_projection(qat_tiny, tmp_path):
    # No MUL between the query projection and the score matmul: 1/sqrt(key_dim) lives
    # in the projection's int8 kernel (the 16x8 converter cannot quantize that MUL).
    from keras_llmopt._src.quantization.state import STATE_ATTR

    attention = qat_tiny.get_layer("block_0_attention")
    state = vars(attention._query_dense)[STATE_ATTR]
    assert state.config.output_scale == pytest.approx(attention._inverse_sqrt_key_dim)
    assert "query" not in vars(attention)[STATE_ATTR].attention_q
    # The stripped float model scales the query itself: its kernel is the quantized
    # scaled kernel divided by the scale.
    plain = quantization.strip_quantization(qat_tiny)
    kernel = keras.ops.convert_to_numpy(
        plain.get_layer("block_0_attention")._query_dense.kernel
    ).reshape(attention._query_dense.kernel.shape[0], -1)
    quantized = keras.ops.convert_to_numpy(state.weights_q[0].value(False))
    np.testing.assert_allclose(kernel * attention._inverse_sqrt_key_dim, quantized, rtol=1e-5)
    assert max(np.unique(column).size for column in quantized.T) <= 255  # int8 grid
    path = tmp_path / "q.tflite"
    export.to_tflite(qat_tiny, path, quantization="int8", verify=False)
    ops, tensors = _tensor_details(path)
    producers = {o: op for op in ops for o in op["outputs"]}
    for op in ops:
        if op["op_name"] == "BATCH_MATMUL":
            for i in op["inputs"][:2]:
                source = producers.get(i)
                while source is not None and source["op_name"] in ("RESHAPE", "TRANSPOSE"):
                    source = producers.get(source["inputs"][0])
                assert source is None or source["op_name"] != "MUL", op


def test_weight_only_4bit_qat_model_exports_its_4bit_grid(trained_tiny, tmp_path):
    q = quantization.quantize_model(trained_tiny, scheme="4bit_weights")
    path = tmp_path / "w4.tflite"
    report = export.to_tflite(q, path, quantization="dynamic_int8")  # verified by default
    assert any("weight-only" in note for note in report.notes), report.notes
    ops, tensors = _tensor_details(path)
    interpreter = _interpreter(path)
    kernels = [
        interpreter.get_tensor(op["inputs"][1]) for op in ops if op["op_name"] == "FULLY_CONNECTED"
    ]
    assert kernels and all(k.dtype == np.int8 for k in kernels)
    # Each output channel holds at most the 15 levels of symmetric 4-bit weights.
    assert max(np.unique(row).size for k in kernels for row in k) <= 15


@pytest.mark.parametrize(
    "scheme, block_size", [("4bit_weights", None), ("4bit_weights_group32", 32)]
)
def test_4bit_qat_model_exports_int4_weights_on_its_grid(
    scheme, block_size, trained_tiny, tiny_corpus, tmp_path
):
    q = _finetune(quantization.quantize_model(trained_tiny, scheme=scheme), tiny_corpus, steps=4)
    path = tmp_path / "w4.tflite"
    report = export.to_tflite(q, path, quantization="int4")  # verified by default
    assert any("int4 weights" in note for note in report.notes), report.notes
    from tensorflow.lite.python import schema_py_generated as schema

    flat = schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))
    graph = flat.subgraphs[0]
    kernels = [
        graph.tensors[op.inputs[1]]
        for op in graph.operators
        if flat.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.FULLY_CONNECTED
    ]
    assert kernels and {k.type for k in kernels} == {schema.TensorType.INT4}
    for k in kernels:
        rows, inputs = k.shape
        assert len(flat.buffers[k.buffer].data) == rows * inputs // 2  # packed 4-bit
        if block_size is None:  # one scale per output channel, like the scheme
            assert len(k.quantization.scale) == rows
        else:  # one per block of input rows, like the scheme's groups
            assert k.quantization.details.blockSize == block_size
    # Trained on the same grid: the artifact scores like the Keras QAT model.
    keras_bpb = reference.evaluate(q, tiny_corpus, num_windows=16).bpb
    tflite_bpb = reference.evaluate(str(path), tiny_corpus, num_windows=16).bpb
    assert abs(tflite_bpb - keras_bpb) < 0.02, (keras_bpb, tflite_bpb)
    int8_size = export.to_tflite(q, tmp_path / "w8.tflite", "dynamic_int8").size_bytes
    assert report.size_bytes < int8_size


def test_int4_refuses_activation_quantized_models_and_bad_block_sizes(qat_tiny, tmp_path):
    with pytest.raises(ValueError, match="activation ranges"):
        export.to_tflite(qat_tiny, tmp_path / "a.tflite", quantization="int4")
    with pytest.raises(ValueError, match=r"block_size.*\[32, 64, 128, 256\]"):
        export.to_tflite(qat_tiny, tmp_path / "b.tflite", quantization="int4", block_size=48)
    with pytest.raises(ValueError, match="only used by quantization='int4'"):
        export.to_tflite(qat_tiny, tmp_path / "c.tflite", block_size=32)
    with pytest.raises(ValueError, match="sparse=True with quantization='int4'"):
        export.to_tflite(qat_tiny, tmp_path / "d.tflite", quantization="int4", sparse=True)
    assert not list(tmp_path.iterdir())
