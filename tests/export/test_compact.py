"""compact_tflite: smaller .tflite flatbuffers that compute exactly what the originals do."""

import io
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from keras_llmopt._src.export.compact import compact_tflite  # noqa: E402

# int16x8 calibration fails on an integer (token) input in this converter.
CASES = [
    (kind, mode)
    for kind in ("dense", "einsum", "embedding")
    for mode in ("float32", "dynamic_int8", "int8", "int16x8")
    if (kind, mode) != ("embedding", "int16x8")
]
# Zero-point vector of QuantizationParameters: field id 3, vtable slot 4 + 2 * 3.
ZERO_POINT_SLOT = 10
DATA_SLOT = 4


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def _build(kind):
    import keras

    keras.utils.set_random_seed(0)
    if kind == "dense":
        inputs = keras.Input((32,))
        x = keras.layers.Dense(64, activation="relu")(inputs)
        x = keras.layers.Dense(48, activation="relu")(x)
        outputs = keras.layers.Dense(8)(x)
    elif kind == "einsum":
        inputs = keras.Input((6, 32))
        x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 64), bias_axes="d")(inputs)
        x = keras.layers.Activation("relu")(x)
        outputs = keras.layers.EinsumDense("abd,de->abe", output_shape=(None, 16), bias_axes="e")(x)
    else:
        inputs = keras.Input((5,), batch_size=1, dtype="int32", name="tokens")
        x = keras.layers.Embedding(64, 32)(inputs)
        x = keras.layers.Dense(64, activation="relu")(x)
        outputs = keras.layers.Dense(64)(x)
    return keras.Model(inputs, outputs)


def _sample(detail, rng):
    shape = [1 if d < 0 else int(d) for d in detail["shape_signature"]]
    if np.issubdtype(detail["dtype"], np.integer):
        return rng.integers(0, 64, shape).astype(detail["dtype"])
    return rng.normal(size=shape).astype(detail["dtype"])


def _convert(model, mode):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode in ("int8", "int16x8"):
        rng = np.random.default_rng(1)
        details = [
            {"shape_signature": [1, *inp.shape[1:]], "dtype": np.dtype(inp.dtype)}
            for inp in model.inputs
        ]
        converter.representative_dataset = lambda: (
            [_sample(d, rng) for d in details] for _ in range(8)
        )
    if mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    return converter.convert()


@pytest.fixture(scope="module")
def converted():
    """``{(model, mode): tflite bytes}``, converted once for the module."""
    cache = {}

    def get(kind, mode):
        if (kind, mode) not in cache:
            cache[kind, mode] = _convert(_build(kind), mode)
        return cache[kind, mode]

    return get


def _interpreter(**kwargs):
    interpreter = litert.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, feeds):
    for detail, value in zip(interpreter.get_input_details(), feeds):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _assert_same_outputs(original, compacted, trials=3):
    rng = np.random.default_rng(0)
    for _ in range(trials):
        feeds = [_sample(d, rng) for d in original.get_input_details()]
        expected, actual = _run(original, feeds), _run(compacted, feeds)
        assert len(expected) == len(actual)
        for e, a in zip(expected, actual):
            assert e.dtype == a.dtype
            assert np.array_equal(e, a)


def _comparable(details):
    out = []
    for d in details:
        q = d["quantization_parameters"]
        out.append(
            (
                d["name"],
                np.dtype(d["dtype"]).name,
                tuple(d["shape"]),
                tuple(d["shape_signature"]),
                d["quantization"],
                q["scales"].tobytes(),
                q["zero_points"].tobytes(),
                q["quantized_dimension"],
            )
        )
    return out


def _model(content):
    schema = _schema()
    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(content, 0))


def _vector(array):
    return None if array is None else np.asarray(array).tobytes()


@pytest.mark.parametrize("kind,mode", CASES)
def test_compacted_model_computes_the_same(converted, kind, mode):
    content = converted(kind, mode)
    compacted, stats = compact_tflite(content)

    assert stats["reason"] is None
    assert stats["bytes_before"] == len(content)
    assert stats["bytes_after"] == len(compacted) < len(content)
    assert compacted[4:8] == b"TFL3"

    original = _interpreter(model_content=content)
    rewritten = _interpreter(model_content=compacted)
    assert _comparable(rewritten.get_input_details()) == _comparable(original.get_input_details())
    assert _comparable(rewritten.get_output_details()) == _comparable(original.get_output_details())
    assert rewritten.get_signature_list() == original.get_signature_list()
    _assert_same_outputs(original, rewritten)

    before, after = _model(content), _model(compacted)
    assert [
        (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version)
        for c in after.operatorCodes
    ] == [
        (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version)
        for c in before.operatorCodes
    ]
    assert [(m.name, m.buffer) for m in after.metadata] == [
        (m.name, m.buffer) for m in before.metadata
    ]
    assert len(after.buffers) == len(before.buffers)
    for b, a in zip(before.buffers, after.buffers):
        assert _vector(a.data) == _vector(b.data)
    for sub_before, sub_after in zip(before.subgraphs, after.subgraphs, strict=True):
        assert len(sub_after.operators) == len(sub_before.operators)
        for op_b, op_a in zip(sub_before.operators, sub_after.operators):
            assert op_a.opcodeIndex == op_b.opcodeIndex
            assert _vector(op_a.inputs) == _vector(op_b.inputs)
            assert _vector(op_a.outputs) == _vector(op_b.outputs)
            assert op_a.builtinOptionsType == op_b.builtinOptionsType
        assert len(sub_after.tensors) == len(sub_before.tensors)
        for t_b, t_a in zip(sub_before.tensors, sub_after.tensors):
            assert (t_a.type, t_a.buffer, t_a.isVariable) == (t_b.type, t_b.buffer, t_b.isVariable)
            assert _vector(t_a.shape) == _vector(t_b.shape)
            assert _vector(t_a.shapeSignature) == _vector(t_b.shapeSignature)
            assert (t_a.quantization is None) == (t_b.quantization is None)
            if t_b.quantization is not None:
                qa, qb = t_a.quantization, t_b.quantization
                for field in ("scale", "zeroPoint", "min", "max"):
                    assert _vector(getattr(qa, field)) == _vector(getattr(qb, field)), field
                assert qa.quantizedDimension == qb.quantizedDimension
    if mode in ("int8", "int16x8"):
        assert stats["shared_vectors"] > 0
    if mode == "int8":
        # Per-channel weights and int32 biases all carry all-zero int64 zero points.
        per_channel = [
            t.quantization.zeroPoint
            for t in before.subgraphs[0].tensors
            if t.quantization is not None
            and t.quantization.zeroPoint is not None
            and len(t.quantization.zeroPoint) > 1
        ]
        assert len(per_channel) >= 2


def test_identical_vectors_point_to_one_place_and_buffers_are_aligned(converted):
    content = converted("dense", "int8")
    compacted, stats = compact_tflite(content)
    schema = _schema()
    root = schema.Model.GetRootAs(compacted, 0)
    subgraph = root.Subgraphs(0)
    where = {}
    fields = 0
    for i in range(subgraph.TensorsLength()):
        quantization = subgraph.Tensors(i).Quantization()
        if quantization is None or quantization.ZeroPointLength() == 0:
            continue
        tab = quantization._tab
        position = tab.Vector(tab.Offset(ZERO_POINT_SLOT))
        key = quantization.ZeroPointAsNumpy().tobytes()
        assert where.setdefault(key, position) == position
        fields += 1
    # Fewer distinct zero-point vectors than fields holding one: they are shared.
    assert len(where) < fields
    assert stats["shared_vectors"] >= fields - len(where)
    for i in range(root.BuffersLength()):
        buffer = root.Buffers(i)
        if buffer.DataLength():
            assert buffer._tab.Vector(buffer._tab.Offset(DATA_SLOT)) % 16 == 0


def test_compacted_file_passes_the_verifier_from_a_path(converted, tmp_path):
    content = converted("embedding", "int8")
    compacted, stats = compact_tflite(content)
    assert stats["reason"] is None
    path = tmp_path / "compact.tflite"
    path.write_bytes(compacted)
    original = _interpreter(model_content=content)
    _assert_same_outputs(original, _interpreter(model_path=str(path)))
    _assert_same_outputs(original, _interpreter(model_content=compacted))
    # The signature runner finds its tensors through the (kept) signature maps.
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 64, (1, 5)).astype(np.int32)
    runner_original = original.get_signature_runner()
    runner_compacted = _interpreter(model_path=str(path)).get_signature_runner()
    (key,) = runner_original.get_input_details()
    expected = runner_original(**{key: tokens})
    actual = runner_compacted(**{key: tokens})
    assert expected.keys() == actual.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name])


def test_shorten_names_renames_only_internal_names_and_keeps_them_unique(converted):
    content = converted("dense", "int8")
    compacted, stats = compact_tflite(content)
    before, after = _model(content), _model(compacted)
    subgraph_b, subgraph_a = before.subgraphs[0], after.subgraphs[0]
    exposed = set(subgraph_b.inputs.tolist()) | set(subgraph_b.outputs.tolist())
    internal = [i for i in range(len(subgraph_b.tensors)) if i not in exposed]
    assert stats["names_shortened"] == len(internal) > 0
    for i, (t_b, t_a) in enumerate(zip(subgraph_b.tensors, subgraph_a.tensors)):
        assert t_a.name == (t_b.name if i in exposed else f"t{i}".encode())
    names = [t.name for t in subgraph_a.tensors]
    assert all(names) and len(set(names)) == len(names)
    signature_b, signature_a = before.signatureDefs[0], after.signatureDefs[0]
    assert signature_a.signatureKey == signature_b.signatureKey
    assert [(m.name, m.tensorIndex) for m in signature_a.inputs + signature_a.outputs] == [
        (m.name, m.tensorIndex) for m in signature_b.inputs + signature_b.outputs
    ]


def test_short_names_never_collide_with_an_exposed_name(converted):
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model(converted("dense", "float32"))
    subgraph = model.subgraphs[0]
    exposed = int(subgraph.inputs[0])
    internal = next(i for i in range(len(subgraph.tensors)) if i not in subgraph.inputs)
    subgraph.tensors[exposed].name = f"t{internal}".encode()  # the short name it would get
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    compacted, stats = compact_tflite(content)
    assert stats["reason"] is None
    names = [t.name for t in _model(compacted).subgraphs[0].tensors]
    assert names[exposed] == f"t{internal}".encode()
    assert names[internal] == f"t{internal}_".encode()
    assert all(names) and len(set(names)) == len(names)


def test_shorten_names_false_keeps_every_name(converted):
    content = converted("einsum", "int8")
    compacted, stats = compact_tflite(content, shorten_names=False)
    assert stats["reason"] is None and stats["names_shortened"] == 0
    assert len(compacted) < len(content)
    names = [t.name for t in _model(content).subgraphs[0].tensors]
    assert [t.name for t in _model(compacted).subgraphs[0].tensors] == names
    assert all(names)
    shortened, _ = compact_tflite(content)
    assert len(shortened) < len(compacted)
    _assert_same_outputs(
        _interpreter(model_content=content), _interpreter(model_content=compacted), trials=1
    )


def test_compaction_is_deterministic_and_idempotent(converted):
    content = converted("dense", "int16x8")
    once, _ = compact_tflite(content)
    assert compact_tflite(bytearray(content))[0] == once
    assert compact_tflite(memoryview(content))[0] == once
    twice, stats = compact_tflite(once)
    assert twice == once
    assert "not smaller" in stats["reason"]
    assert stats["bytes_after"] == stats["bytes_before"] == len(once)


def test_garbage_is_refused_with_what_was_received(converted):
    with pytest.raises(ValueError, match=r"not a TFLite flatbuffer.*Received: 11 bytes starting"):
        compact_tflite(b"not a model")
    with pytest.raises(ValueError, match="Received: 0 bytes"):
        compact_tflite(b"")
    # The identifier is right, the tables are cut off.
    with pytest.raises(ValueError, match=r"not a readable TFLite flatbuffer.*Received: 64 bytes"):
        compact_tflite(converted("dense", "float32")[:64])
    with pytest.raises(TypeError, match="Received: content of type str"):
        compact_tflite("model.tflite")


def test_buffers_stored_after_the_flatbuffer_are_left_alone():
    converter = tf.lite.TFLiteConverter.from_keras_model(_build("dense"))
    converter._experimental_use_buffer_offset = True
    content = converter.convert()
    assert any(b.offset for b in _model(content).buffers)
    compacted, stats = compact_tflite(content)
    assert compacted == content
    assert "offset" in stats["reason"]
    assert stats["bytes_after"] == stats["bytes_before"] == len(content)
    assert stats["shared_vectors"] == stats["names_shortened"] == 0


def test_appended_files_are_left_alone(converted):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("labels.txt", "a\nb\n")
    content = converted("dense", "int8") + archive.getvalue()
    compacted, stats = compact_tflite(content)
    assert compacted == content
    assert "appended" in stats["reason"]


def test_fields_unknown_to_the_schema_are_left_alone(converted, monkeypatch):
    schema = _schema()
    model = _model(converted("dense", "int8"))
    end = schema.TensorEnd

    def end_with_extra_field(builder):
        builder.PrependInt32Slot(11, 7, 0)  # A field a newer schema might add.
        return end(builder)

    with monkeypatch.context() as patch:
        patch.setattr(schema, "TensorStart", lambda builder: builder.StartObject(12))
        patch.setattr(schema, "TensorEnd", end_with_extra_field)
        from tensorflow.lite.tools import flatbuffer_utils

        content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    _interpreter(model_content=content)  # The runtime ignores the extra field.
    compacted, stats = compact_tflite(content)
    assert compacted == content
    assert "Tensor table has fields" in stats["reason"]


def test_docstring_examples(run_docstring_examples):
    run_docstring_examples("keras_llmopt._src.export.compact")


def test_to_tflite_writes_the_compacted_file(trained_tiny, tmp_path):
    from keras_llmopt import export

    plain = export.to_tflite(
        trained_tiny, tmp_path / "plain.tflite", quantization="dynamic_int8", compact_file=False
    )
    small = export.to_tflite(trained_tiny, tmp_path / "small.tflite", quantization="dynamic_int8")
    stats = small.summary["compaction"]
    assert "compaction" not in plain.summary
    assert stats["reason"] is None and stats["bytes_after"] == small.size_bytes
    assert small.size_bytes < plain.size_bytes == stats["bytes_before"]
    assert small.summary["inputs"] == plain.summary["inputs"]
    tokens = np.random.default_rng(0).integers(0, 256, (1, 64)).astype("int32")
    np.testing.assert_array_equal(
        export.load_runner(small.path)(tokens), export.load_runner(plain.path)(tokens)
    )
    with pytest.raises(TypeError, match="compact_file"):
        export.to_tflite(trained_tiny, tmp_path / "x.tflite", compact_file="yes")
    assert not (tmp_path / "x.tflite").exists()
