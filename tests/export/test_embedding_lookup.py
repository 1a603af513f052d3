"""Embedding tables in int4 files: GATHER rewritten as EMBEDDING_LOOKUP, stored int8 per row."""

import numpy as np
import pytest

from keras_llmopt._src.export import embedding_lookup


def _ops(content):
    """``[(op name, first table-like input's type)]`` of every op in subgraph 0."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(content), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    subgraph, found = model.Subgraphs(0), []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        table = {"GATHER": 0, "EMBEDDING_LOOKUP": 1}.get(name)
        kind = None if table is None else types[subgraph.Tensors(op.Inputs(table)).Type()]
        found.append((name, kind))
    return found


def _run(content, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _convert(fn, spec):
    import tensorflow as tf

    f = tf.function(fn, input_signature=[spec])
    return tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert()


def test_the_rewritten_gpt_computes_exactly_the_same_logits(tmp_path):
    from keras_llmopt import export, reference

    path = tmp_path / "fp32.tflite"
    export.to_tflite(reference.build_gpt("tiny"), path)
    content = path.read_bytes()
    rewritten, count = embedding_lookup.gathers_as_lookups(content)
    assert count == 1
    assert ("EMBEDDING_LOOKUP", "FLOAT32") in _ops(rewritten)
    assert ("GATHER", "FLOAT32") not in _ops(rewritten)
    x = np.random.default_rng(0).integers(0, 256, (1, 64)).astype(np.int32)
    np.testing.assert_array_equal(_run(rewritten, x)[0], _run(content, x)[0])


def test_a_table_a_matmul_also_reads_stays_a_float_gather():
    import tensorflow as tf

    table = tf.constant(np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32))
    content = _convert(
        lambda ids: tf.matmul(tf.gather(table, ids), table, transpose_b=True),
        tf.TensorSpec((4,), tf.int32),
    )
    rewritten, count = embedding_lookup.gathers_as_lookups(content)
    assert (count, rewritten) == (0, content)


def test_int4_files_store_the_embedding_table_in_int8_and_are_smaller(tmp_path, monkeypatch):
    from keras_llmopt import export, reference

    model = reference.build_gpt("tiny")
    tolerance = {"top1": 0.5}  # an untrained model's near-tie logits
    report = export.to_tflite(
        model, tmp_path / "a.tflite", quantization="int4", tolerance=tolerance
    )
    assert report.verification.passed
    ops = _ops((tmp_path / "a.tflite").read_bytes())
    assert ("EMBEDDING_LOOKUP", "INT8") in ops and ("GATHER", "FLOAT32") not in ops
    assert any("embedding table(s) as EMBEDDING_LOOKUP, int8" in n for n in report.notes)
    monkeypatch.setattr(embedding_lookup, "gathers_as_lookups", lambda content: (content, 0))
    before = export.to_tflite(
        model, tmp_path / "b.tflite", quantization="int4", tolerance=tolerance
    )
    table = 256 * 64  # the tiny GPT's token table: 4 bytes a value float, 1 in int8
    assert before.size_bytes - report.size_bytes >= 0.7 * 3 * table


def test_an_unreadable_file_is_left_as_it_is():
    assert embedding_lookup.gathers_as_lookups(b"not a flatbuffer") == (b"not a flatbuffer", 0)


@pytest.mark.parametrize("shape", [(3,), (2, 3)])
def test_ids_of_any_static_rank_give_the_same_rows(shape):
    import tensorflow as tf

    table = tf.constant(np.arange(40, dtype=np.float32).reshape(10, 4))
    content = _convert(lambda ids: tf.gather(table, ids) * 2.0, tf.TensorSpec(shape, tf.int32))
    rewritten, count = embedding_lookup.gathers_as_lookups(content)
    assert count == 1
    x = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape) % 10
    np.testing.assert_array_equal(_run(rewritten, x)[0], _run(content, x)[0])
