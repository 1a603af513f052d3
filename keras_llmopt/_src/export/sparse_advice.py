"""Sparse or dense weight encoding in a ``.tflite``: keep the better one, and say why.

Zeros in a dense-encoded file cost as many bytes as any other value: a 50%-pruned model's
dense file is as large as the unpruned one's. TFLite's sparse encoding (``sparse=True``)
stores only the non-zeros plus index arrays, which pays for float weights at high
sparsity but can come out larger for int8 weights, and LiteRT's XNNPACK delegate refuses
sparse int8 matmuls (the builtin kernels run them, several times slower).
:func:`convert` converts with the requested encoding and, with ``sparse=True``, also
densely, keeps the smaller file and writes in the export's notes what it chose and why;
with ``sparse=False`` it notes when the matmul weights are mostly zeros.
"""

import numpy as np

from keras_llmopt._src.export import converter, runtime

# At least this fraction of zeros in the matmul weights earns the dense-file advice.
ZERO_FRACTION_ADVICE = 0.3
_MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")
_NUMPY_TYPES = {"FLOAT32": "<f4", "FLOAT16": "<f2", "INT8": "i1", "UINT8": "u1", "INT32": "<i4"}


def convert(traced, mode, sparse, representative_dataset, what, notes):
    """``converter.convert`` that picks the smaller weight encoding; appends notes.

    Args:
        traced: A ``converter.TracedSignatures``.
        mode: A ``tflite_modes.TFLiteMode``.
        sparse: Whether the caller asked for the sparse encoding.
        representative_dataset: Calibration samples for the converter (or ``None``).
        what: The caller's name, for error messages.
        notes: The export's notes (a list), appended to.

    Returns:
        The flatbuffer's bytes: with ``sparse=True`` the sparse file if it is smaller than
        the dense one, else the dense file.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt._src.export import tflite_modes
        >>> from keras_llmopt._src.export.signature_def import Signature
        >>> w = np.where(np.arange(64 * 64).reshape(64, 64) % 4, 0.0, 1.0).astype("float32")
        >>> s = Signature("mm", lambda x: {"y": x @ w}, [("x", (1, 64), "float32")],
        ...               ["y"], lambda x: {"y": x @ w})
        >>> notes = []
        >>> _ = convert(converter.trace([s]), tflite_modes.MODES[None], False, None, "ex", notes)
        >>> notes[0].split(":")[0]
        '75% of the matmul weights are zeros'
    """

    def run(encoding):
        return converter.convert(
            traced,
            mode,
            sparse=encoding,
            representative_dataset=representative_dataset,
            what=what,
        )

    if not sparse:
        content = run(False)
        fraction = matmul_zero_fraction(content)
        if fraction is not None and fraction >= ZERO_FRACTION_ADVICE:
            notes.append(
                f"{fraction:.0%} of the matmul weights are zeros: a dense-encoded file stores "
                "zeros like any other value, so this file is no smaller than the unpruned "
                "model's. To shrink it, remove whole units (structural pruning: attention "
                "heads, MLP units, layers) or pass sparse=True (TFLite's sparse encoding; "
                "the export keeps it only where it is smaller)"
            )
        return content
    sparse_content, dense_content = run(True), run(False)
    chosen, note = choose_encoding(sparse_content, dense_content)
    notes.append(note)
    return chosen


def choose_encoding(sparse_content, dense_content):
    """``(content, note)``: the smaller of two encodings of one model, and why.

    The note gives both sizes (as converted, before ``compact_tflite``) and says when
    XNNPACK refuses the sparse file.

    Example:
        >>> import tensorflow as tf
        >>> f = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec((2,), tf.float32)])
        >>> content = tf.lite.TFLiteConverter.from_concrete_functions(
        ...     [f.get_concrete_function()], f).convert()
        >>> kept, note = choose_encoding(content, content)
        >>> kept is content, note.endswith("kept the dense encoding")
        (True, True)
    """
    sparse_size, dense_size = len(sparse_content), len(dense_content)
    refused = _xnnpack_refuses(sparse_content)
    xnnpack = (
        " and LiteRT's XNNPACK delegate refuses it (the builtin kernels run it, several "
        "times slower)"
        if refused
        else ""
    )
    if sparse_size >= dense_size:
        return dense_content, (
            f"sparse=True: as converted, the sparse encoding ({sparse_size:,} B) is not "
            f"smaller than the dense one ({dense_size:,} B){xnnpack}; kept the dense encoding"
        )
    saved = 1 - sparse_size / dense_size
    if refused and not _xnnpack_refuses(dense_content):
        return sparse_content, (
            f"sparse=True: kept the sparse encoding ({saved:.0%} smaller as converted: "
            f"{sparse_size:,} B against {dense_size:,} B dense), but XNNPACK refuses it and "
            "the dense file runs on XNNPACK: pass sparse=False if speed matters more than size"
        )
    return sparse_content, (
        f"sparse=True: kept the sparse encoding ({saved:.0%} smaller as converted: "
        f"{sparse_size:,} B against {dense_size:,} B dense)"
    )


def _xnnpack_refuses(content):
    return runtime.xnnpack_error(content) is not None


def matmul_zero_fraction(content):
    """The fraction of zeros among the constant weights of a ``.tflite``'s matmul ops.

    Weights are the second input of ``FULLY_CONNECTED``, ``BATCH_MATMUL`` and
    convolutions, read from their buffers (through a ``DEQUANTIZE`` of float16 weights);
    ``None`` when no such op has constant weights. Sparse-encoded weights are skipped.

    Example:
        >>> import tensorflow as tf
        >>> w = tf.constant([[0.0, 1.0], [0.0, 0.0]])
        >>> f = tf.function(lambda x: tf.matmul(x, w),
        ...                 input_signature=[tf.TensorSpec((1, 2), tf.float32)])
        >>> content = tf.lite.TFLiteConverter.from_concrete_functions(
        ...     [f.get_concrete_function()], f).convert()
        >>> matmul_zero_fraction(content)
        0.75
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def builtin(op):
        code = model.OperatorCodes(op.OpcodeIndex())
        return op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))

    zeros = total = 0
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        ops = [subgraph.Operators(i) for i in range(subgraph.OperatorsLength())]
        producer = {int(op.Outputs(0)): op for op in ops if op.OutputsLength()}
        for op in ops:
            if builtin(op) not in _MATMUL_OPS or op.InputsLength() < 2:
                continue
            index = int(op.Inputs(1))
            source = producer.get(index)
            if index < 0:
                continue
            if source is not None and builtin(source) == "DEQUANTIZE":
                index = int(source.Inputs(0))
            values = _constant(model, subgraph.Tensors(index), type_names)
            if values is not None:
                zeros += int(np.count_nonzero(values == 0))
                total += values.size
    return zeros / total if total else None


def _constant(model, tensor, type_names):
    dtype = _NUMPY_TYPES.get(type_names.get(tensor.Type()))
    if dtype is None or tensor.Sparsity() is not None:
        return None
    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(data, int) or not len(data):  # no data: not a constant
        return None
    return np.frombuffer(data.tobytes(), dtype=dtype)
