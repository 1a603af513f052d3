"""Lossless size compaction of ``.tflite`` flatbuffers.

The TFLite converter writes every tensor's metadata vectors on their own: each
per-channel quantized tensor (weights, int32 biases) carries an int64 ``zero_point``
vector (all zeros for symmetric weights) and a float32 ``scale`` vector, and every
tensor keeps the long name of the TensorFlow op it came from. A flatbuffer lets several
tables point at one vector, so :func:`compact_tflite` rewrites the model with each
distinct numeric vector stored once, and (optionally) short unique names (``t<index>``)
on the tensors no input, output or signature exposes (tools that find tensors by name,
AI Edge Quantizer and model explorers, need every name unique and non-empty). Nothing
the interpreter computes changes: weights, quantization parameters, shapes, ops,
options, metadata and signatures are kept, and the rewrite is read back and compared
with the original before it is returned.
"""

import collections
import functools
import math
import struct

import numpy as np

from keras_llmopt._src.export import tensor_names

# Buffer data starts on a 16-byte boundary (the converter guarantees 4; some kernels
# and delegates read constant data with wide loads).
_BUFFER_ALIGNMENT = 16
_FILE_IDENTIFIER = b"TFL3"

# The object-API fields the packers below write. A TensorFlow whose schema has other
# fields gets the model back unchanged rather than a rewrite that would drop them.
_TENSOR_FIELDS = frozenset(
    {
        "shape",
        "type",
        "buffer",
        "name",
        "quantization",
        "isVariable",
        "sparsity",
        "shapeSignature",
        "hasRank",
        "variantTensors",
        "externalBuffer",
    }
)
_QUANTIZATION_FIELDS = frozenset(
    {"min", "max", "scale", "zeroPoint", "detailsType", "details", "quantizedDimension"}
)
_BUFFER_FIELDS = frozenset({"data", "offset", "size"})

# What a malformed flatbuffer makes the generated readers raise.
_PARSE_ERRORS = (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError)


def compact_tflite(content, shorten_names=True):
    """Rewrites a ``.tflite`` flatbuffer smaller without changing what it computes.

    Every distinct numeric vector of the tensor tables (quantization ``zero_point``,
    ``scale``, ``min``, ``max``; ``shape`` and ``shape_signature``) is written once and
    shared by all the fields that hold it: the all-zero ``zero_point`` vectors of
    per-channel weights and biases shrink to one per length. With ``shorten_names``,
    the tensors that no subgraph input/output or SignatureDef exposes are renamed
    ``t<index>`` (unique within their subgraph, never empty); the exposed names,
    SignatureDef keys and tensor maps, operator codes, options, metadata entries and
    weights are kept byte for byte. Buffer data is aligned to 16 bytes.

    The rewritten flatbuffer is parsed again and compared field by field with the
    renamed model before it is returned. A valid model this pass cannot rewrite
    faithfully comes back unchanged, with the reason in ``stats["reason"]``: buffers
    or custom options stored after the flatbuffer (``offset``/``size``, models over
    2 GB) or in external files, files with data appended (TFLite Support's
    associated-file zip), fields or union members this TensorFlow's schema does not
    know, or a rewrite that is not smaller.

    Args:
        content: The ``.tflite`` file's bytes (``bytes``, ``bytearray`` or
            ``memoryview``).
        shorten_names: Replace the (long, op-path) names of internal tensors with
            short unique ones; ``False`` keeps every name as the converter wrote it.

    Returns:
        ``(compacted, stats)``: the new file's bytes (the input's bytes when it is left
        unchanged) and ``{"bytes_before", "bytes_after", "shared_vectors",
        "names_shortened", "reason"}``, where ``shared_vectors`` counts the table
        fields that point at a vector another field also points at, ``names_shortened``
        the tensors renamed, and ``reason`` is ``None`` when the model was compacted.

    Raises:
        TypeError: If ``content`` is not bytes-like.
        ValueError: If ``content`` is not a TFLite flatbuffer.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> weights = tf.constant(np.random.default_rng(0).normal(size=(8, 16)), tf.float32)
        >>> @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
        ... def dense(x):
        ...     return tf.nn.relu(tf.matmul(x, weights))
        >>> converter = tf.lite.TFLiteConverter.from_concrete_functions(
        ...     [dense.get_concrete_function()])
        >>> converter.optimizations = [tf.lite.Optimize.DEFAULT]
        >>> converter.representative_dataset = lambda: (
        ...     [np.random.rand(1, 8).astype("float32")] for _ in range(8))
        >>> content = converter.convert()
        >>> compacted, stats = compact_tflite(content)
        >>> stats["reason"] is None, len(compacted) < len(content)
        (True, True)
        >>> stats["bytes_after"] == len(compacted), stats["names_shortened"] > 0
        (True, True)
    """
    data = _as_bytes(content)
    from tensorflow.lite.python import schema_py_generated as schema

    stats = dict(bytes_before=len(data), bytes_after=len(data), shared_vectors=0)
    stats.update(names_shortened=0, reason=None)
    try:
        root = schema.Model.GetRootAs(data, 0)
        reason = _unsupported(schema, root, data)
        model = schema.ModelT.InitFromObj(root) if reason is None else None
    except _PARSE_ERRORS as error:
        raise ValueError(
            "`content` is not a readable TFLite flatbuffer "
            f"({type(error).__name__}: {error}). Received: {_describe(data)}"
        ) from error
    if reason is None:
        reason = _unsupported_model(model)
    if reason is not None:
        stats["reason"] = reason
        return data, stats

    names_shortened = tensor_names.shorten_tensor_names(model) if shorten_names else 0
    compacted, shared = _pack(schema, model, size_hint=len(data))
    reason = _round_trip_difference(schema, compacted, model)
    if reason is None and len(compacted) >= len(data):
        reason = f"the rewrite is not smaller ({len(compacted)} >= {len(data)} bytes)"
    if reason is not None:
        stats["reason"] = reason
        return data, stats
    stats.update(bytes_after=len(compacted), shared_vectors=shared, names_shortened=names_shortened)
    return compacted, stats


def _as_bytes(content):
    if isinstance(content, memoryview):
        content = content.tobytes()
    if isinstance(content, bytearray):
        content = bytes(content)
    if not isinstance(content, bytes):
        raise TypeError(
            "`content` must be the bytes of a .tflite file (bytes, bytearray or memoryview). "
            f"Received: content of type {type(content).__name__}"
        )
    if len(content) < 8 or content[4:8] != _FILE_IDENTIFIER:
        raise ValueError(
            "`content` is not a TFLite flatbuffer (no 'TFL3' file identifier at bytes 4-8). "
            f"Received: {_describe(content)}"
        )
    return content


def _describe(data):
    return f"{len(data)} bytes starting {data[:16]!r}"


def _unsupported(schema, root, data):
    """Why the raw flatbuffer cannot be rewritten faithfully, or ``None``."""
    for name, fields in (
        ("TensorT", _TENSOR_FIELDS),
        ("QuantizationParametersT", _QUANTIZATION_FIELDS),
        ("BufferT", _BUFFER_FIELDS),
    ):
        found = frozenset(vars(getattr(schema, name)()))
        if found != fields:
            return (
                f"this TensorFlow's TFLite schema has {name} fields the compactor does not "
                f"handle: {sorted(found ^ fields)}"
            )
    if _ends_with_zip(data):
        return "files are appended after the flatbuffer (a zip of associated files)"
    return _unknown_fields(schema, root)


def _ends_with_zip(data):
    """Whether ``data`` ends with a zip archive's end record (TFLite Support appends one)."""
    start = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if start < 0 or start + 22 > len(data):
        return False
    (comment_length,) = struct.unpack_from("<H", data, start + 20)
    return start + 22 + comment_length == len(data)


def _unsupported_model(model):
    """Why the unpacked model cannot be rewritten faithfully, or ``None``."""
    for buffer in model.buffers or ():
        if buffer.offset or buffer.size:
            return (
                "buffers are stored after the flatbuffer (Buffer.offset/size: a model over "
                "2 GB, or a tool such as the AI Edge Quantizer wrote them so)"
            )
    if model.externalBuffers or model.externalBufferGroups:
        return "the model refers to external buffers"
    for subgraph in model.subgraphs or ():
        for tensor in subgraph.tensors or ():
            if tensor.externalBuffer:
                return "tensors refer to external buffers"
        for op in subgraph.operators or ():
            if op.largeCustomOptionsOffset or op.largeCustomOptionsSize:
                return "custom options are stored after the flatbuffer (large custom options)"
    return None


class _FieldCounter:
    """Stands in for a builder to read how many fields ``<Table>Start`` declares."""

    def StartObject(self, count):  # The builder method it stands in for.
        self.count = count


@functools.cache
def _declared_fields(schema, table):
    """How many fields (deprecated ones included) the schema declares for ``table``."""
    start = getattr(schema, f"{table}Start", None)
    if start is None:
        return None
    counter = _FieldCounter()
    start(counter)
    return counter.count


def _set_fields_beyond(tab, known):
    """Whether the table at ``tab`` sets a field with an id of ``known`` or more."""
    from flatbuffers import number_types as N

    vtable = tab.Pos - tab.Get(N.SOffsetTFlags, tab.Pos)
    slots = (tab.Get(N.VOffsetTFlags, vtable) - 4) // 2
    return any(tab.Get(N.VOffsetTFlags, vtable + 4 + 2 * i) for i in range(known, slots))


def _union_names(enum):
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def _unknown_fields(schema, root):
    """Names a table of the model that has fields or union members the schema lacks."""
    options = _union_names(schema.BuiltinOptions)
    options2 = _union_names(schema.BuiltinOptions2)

    def check(table_name, obj):
        if obj is None:
            return None
        known = _declared_fields(schema, table_name)
        if known is None or _set_fields_beyond(obj._tab, known):
            return f"a {table_name} table has fields this TensorFlow's TFLite schema lacks"
        return None

    def check_union(names, kind, table):
        if not kind:
            return None
        if kind not in names:
            return f"an operator uses options type {kind} that this TFLite schema lacks"
        if table is None:
            return None
        known = _declared_fields(schema, names[kind])
        if known is None or _set_fields_beyond(table, known):
            return f"a {names[kind]} table has fields this TensorFlow's TFLite schema lacks"
        return None

    found = check("Model", root)
    items = [("OperatorCode", root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())]
    items += [("Buffer", root.Buffers(i)) for i in range(root.BuffersLength())]
    items += [("Metadata", root.Metadata(i)) for i in range(root.MetadataLength())]
    for i in range(root.SignatureDefsLength()):
        signature = root.SignatureDefs(i)
        items.append(("SignatureDef", signature))
        items += [("TensorMap", signature.Inputs(j)) for j in range(signature.InputsLength())]
        items += [("TensorMap", signature.Outputs(j)) for j in range(signature.OutputsLength())]
    for i in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(i)
        items.append(("SubGraph", subgraph))
        for j in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(j)
            items += [
                ("Tensor", tensor),
                ("QuantizationParameters", tensor.Quantization()),
                ("SparsityParameters", tensor.Sparsity()),
            ]
        for j in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(j)
            items.append(("Operator", op))
            found = found or check_union(options, op.BuiltinOptionsType(), op.BuiltinOptions())
            found = found or check_union(options2, op.BuiltinOptions2Type(), op.BuiltinOptions2())
    for table_name, obj in items:
        found = found or check(table_name, obj)
    return found


class _SharedVectors:
    """Writes each distinct numeric vector once; every later field gets the same offset."""

    def __init__(self, builder):
        self._builder = builder
        self._offsets = {}
        self._uses = collections.Counter()

    def get(self, values, dtype):
        if values is None:
            return None
        array = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
        key = (array.dtype.str, array.tobytes())
        if key not in self._offsets:
            self._offsets[key] = self._builder.CreateNumpyVector(array)
        self._uses[key] += 1
        return self._offsets[key]

    @property
    def shared_fields(self):
        return sum(count for count in self._uses.values() if count > 1)


class _TensorPacker:
    """Packs a ``TensorT`` as its generated ``Pack`` does, with shared vectors and names."""

    def __init__(self, schema, tensor, vectors):
        self._schema, self._tensor, self._vectors = schema, tensor, vectors

    def Pack(self, builder):  # The generated SubGraphT.Pack calls it.
        s, t, vectors = self._schema, self._tensor, self._vectors
        shape = vectors.get(t.shape, "<i4")
        name = builder.CreateSharedString(t.name) if t.name is not None else None
        quantization = None
        if t.quantization is not None:
            quantization = _pack_quantization(s, t.quantization, builder, vectors)
        sparsity = t.sparsity.Pack(builder) if t.sparsity is not None else None
        shape_signature = vectors.get(t.shapeSignature, "<i4")
        variant_tensors = None
        if t.variantTensors is not None:
            packed = [variant.Pack(builder) for variant in t.variantTensors]
            s.TensorStartVariantTensorsVector(builder, len(packed))
            for offset in reversed(packed):
                builder.PrependUOffsetTRelative(offset)
            variant_tensors = builder.EndVector()
        s.TensorStart(builder)
        if shape is not None:
            s.TensorAddShape(builder, shape)
        s.TensorAddType(builder, t.type)
        s.TensorAddBuffer(builder, t.buffer)
        if name is not None:
            s.TensorAddName(builder, name)
        if quantization is not None:
            s.TensorAddQuantization(builder, quantization)
        s.TensorAddIsVariable(builder, t.isVariable)
        if sparsity is not None:
            s.TensorAddSparsity(builder, sparsity)
        if shape_signature is not None:
            s.TensorAddShapeSignature(builder, shape_signature)
        s.TensorAddHasRank(builder, t.hasRank)
        if variant_tensors is not None:
            s.TensorAddVariantTensors(builder, variant_tensors)
        s.TensorAddExternalBuffer(builder, t.externalBuffer)
        return s.TensorEnd(builder)


def _pack_quantization(s, q, builder, vectors):
    """``QuantizationParametersT.Pack`` with every vector taken from ``vectors``."""
    minimum = vectors.get(q.min, "<f4")
    maximum = vectors.get(q.max, "<f4")
    scale = vectors.get(q.scale, "<f4")
    zero_point = vectors.get(q.zeroPoint, "<i8")
    details = q.details.Pack(builder) if q.details is not None else None
    s.QuantizationParametersStart(builder)
    if minimum is not None:
        s.QuantizationParametersAddMin(builder, minimum)
    if maximum is not None:
        s.QuantizationParametersAddMax(builder, maximum)
    if scale is not None:
        s.QuantizationParametersAddScale(builder, scale)
    if zero_point is not None:
        s.QuantizationParametersAddZeroPoint(builder, zero_point)
    s.QuantizationParametersAddDetailsType(builder, q.detailsType)
    if details is not None:
        s.QuantizationParametersAddDetails(builder, details)
    s.QuantizationParametersAddQuantizedDimension(builder, q.quantizedDimension)
    return s.QuantizationParametersEnd(builder)


class _BufferPacker:
    """Packs a ``BufferT`` with its data starting on a 16-byte boundary."""

    def __init__(self, schema, buffer):
        self._schema, self._buffer = schema, buffer

    def Pack(self, builder):  # The generated ModelT.Pack calls it.
        s, b = self._schema, self._buffer
        data = None
        if b.data is not None:
            payload = np.ascontiguousarray(b.data, dtype=np.uint8).tobytes()
            # Pad so that the bytes written next start aligned (the builder writes back
            # to front and Finish aligns the whole file to the largest alignment used).
            builder.Prep(_BUFFER_ALIGNMENT, len(payload))
            data = builder.CreateByteVector(payload)
        s.BufferStart(builder)
        if data is not None:
            s.BufferAddData(builder, data)
        s.BufferAddOffset(builder, b.offset)
        s.BufferAddSize(builder, b.size)
        return s.BufferEnd(builder)


def _pack(schema, model, size_hint):
    """Serializes ``model`` with the shared-vector packers; returns (bytes, shared fields)."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 1024)
    vectors = _SharedVectors(builder)
    tensors = [subgraph.tensors for subgraph in model.subgraphs or ()]
    buffers = model.buffers
    try:
        for subgraph in model.subgraphs or ():
            if subgraph.tensors is not None:
                subgraph.tensors = [_TensorPacker(schema, t, vectors) for t in subgraph.tensors]
        if buffers is not None:
            model.buffers = [_BufferPacker(schema, b) for b in buffers]
        root = model.Pack(builder)
    finally:
        for subgraph, original in zip(model.subgraphs or (), tensors):
            subgraph.tensors = original
        model.buffers = buffers
    builder.Finish(root, file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output()), vectors.shared_fields


def _round_trip_difference(schema, compacted, model):
    """Where the rewritten flatbuffer differs from ``model`` when read back, or ``None``."""
    if not schema.Model.ModelBufferHasIdentifier(compacted, 0):
        return "the rewrite lost the 'TFL3' file identifier"
    try:
        again = schema.ModelT.InitFromObj(schema.Model.GetRootAs(compacted, 0))
    except _PARSE_ERRORS as error:
        return f"the rewrite cannot be read back ({type(error).__name__}: {error})"
    where = _difference(model, again, "model")
    if where is not None:
        return f"the rewrite reads back different from the original at {where}"
    return None


def _difference(a, b, where):
    """The path of the first difference between two object-API trees, or ``None``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        same = a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        return None if same else where
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)):
            return where
        if len(a) != len(b):
            return where
        for i, (x, y) in enumerate(zip(a, b)):
            found = _difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    if hasattr(a, "__dict__") or hasattr(b, "__dict__"):
        if type(a) is not type(b) or vars(a).keys() != vars(b).keys():
            return where
        for key in vars(a):
            found = _difference(getattr(a, key), getattr(b, key), f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b and type(a) is type(b) else where
