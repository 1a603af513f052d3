"""Embedding tables the AI Edge Quantizer can quantize: GATHER as EMBEDDING_LOOKUP.

The converter emits a Keras ``Embedding`` (``take`` on the table) as GATHER, which the
AI Edge Quantizer leaves float; its weight-only recipes quantize EMBEDDING_LOOKUP
tables, which LiteRT runs on int4 and int8 tables with their scales. An int4 file of a
small LLM otherwise keeps its largest float tensors: the token (and position) tables.
Each GATHER of a constant 2-D float table along axis 0 with static shapes becomes
RESHAPE(ids to 1-D) -> EMBEDDING_LOOKUP -> RESHAPE(back), which computes the same rows.
A table another op also reads (tied input and output embeddings) is left as it is.
"""

import numpy as np

from keras_llmopt._src.export import flatbuffer_edit


def gathers_as_lookups(content):
    """Rewrites each constant-table GATHER of ``content`` as an EMBEDDING_LOOKUP.

    Args:
        content: A float ``.tflite`` flatbuffer (bytes).

    Returns:
        ``(content, count)``: the rewritten flatbuffer (the input itself when nothing
        matched or the file cannot be read) and how many GATHER ops were rewritten.

    Example:
        >>> import tensorflow as tf
        >>> table = tf.constant(np.arange(40, dtype=np.float32).reshape(10, 4))
        >>> f = tf.function(lambda ids: tf.gather(table, ids), [tf.TensorSpec((1, 3), tf.int32)])
        >>> c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        >>> content, count = gathers_as_lookups(c.convert())
        >>> count
        1
    """
    schema, model = flatbuffer_edit.read_model(content, "embedding lookups")
    if model is None:
        return content, 0
    builtin = schema.BuiltinOperator
    codes = [flatbuffer_edit.op_code(c) for c in model.operatorCodes]
    gather_only = {}  # buffer -> whether every op reading it (any subgraph) is a GATHER table
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            for position, index in enumerate(op.inputs):
                if index < 0:
                    continue
                buffer = subgraph.tensors[index].buffer
                as_table = codes[op.opcodeIndex] == builtin.GATHER and position == 0
                gather_only[buffer] = gather_only.get(buffer, True) and as_table
    count = 0
    for subgraph in model.subgraphs or []:
        rewritten = []
        for op in subgraph.operators or []:
            if codes[op.opcodeIndex] == builtin.GATHER and _lookup_table(
                schema, model, subgraph, op, gather_only
            ):
                rewritten.extend(_as_lookup(schema, model, subgraph, op, codes))
                count += 1
            else:
                rewritten.append(op)
        subgraph.operators = rewritten
    if not count:
        return content, 0
    return flatbuffer_edit.pack_model(model, len(content)), count


def _static(tensor):
    shape = None if tensor.shape is None else [int(s) for s in tensor.shape]
    signature = tensor.shapeSignature
    if shape is None or (signature is not None and any(int(s) < 0 for s in signature)):
        return None
    return shape


def _lookup_table(schema, model, subgraph, op, gather_only):
    """Whether ``op`` (a GATHER) reads a constant float table, read by GATHERs only, on axis 0."""
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        return False
    options = op.builtinOptions
    if getattr(options, "axis", 0) != 0 or getattr(options, "batchDims", 0) != 0:
        return False
    table, ids = (subgraph.tensors[i] for i in op.inputs)
    buffer = model.buffers[table.buffer] if 0 < table.buffer < len(model.buffers) else None
    has_data = buffer is not None and buffer.data is not None and len(buffer.data) > 0
    shapes = [_static(t) for t in (table, ids, subgraph.tensors[op.outputs[0]])]
    return (
        has_data
        and gather_only.get(table.buffer, False)
        and table.type == schema.TensorType.FLOAT32
        and not _quantized(table)
        and ids.type == schema.TensorType.INT32
        and all(shape is not None for shape in shapes)
        and len(shapes[0]) == 2
    )


def _quantized(tensor):
    q = tensor.quantization
    return q is not None and (q.scale is not None and len(q.scale) or q.details is not None)


def _new_tensor(schema, subgraph, shape, kind, name):
    tensor = schema.TensorT()
    tensor.shape = list(shape)
    tensor.type = kind
    tensor.buffer = 0
    tensor.name = name
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _reshape(schema, model, codes, subgraph, source, target, shape):
    op = schema.OperatorT()
    op.opcodeIndex = flatbuffer_edit.opcode_index(
        schema, model, codes, schema.BuiltinOperator.RESHAPE
    )
    op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    op.builtinOptions = schema.ReshapeOptionsT()
    op.builtinOptions.newShape = list(shape)
    op.inputs, op.outputs = [source], [target]
    return op


def _as_lookup(schema, model, subgraph, op, codes):
    table, ids = op.inputs
    out = op.outputs[0]
    rows = int(np.prod(subgraph.tensors[ids].shape))
    width = int(subgraph.tensors[table].shape[1])
    name = subgraph.tensors[out].name or b"lookup"
    flat_ids = _new_tensor(schema, subgraph, [rows], schema.TensorType.INT32, name + b"/ids")
    flat_out = _new_tensor(
        schema, subgraph, [rows, width], schema.TensorType.FLOAT32, name + b"/rows"
    )
    lookup = schema.OperatorT()
    lookup.opcodeIndex = flatbuffer_edit.opcode_index(
        schema, model, codes, schema.BuiltinOperator.EMBEDDING_LOOKUP
    )
    lookup.inputs, lookup.outputs = [flat_ids, table], [flat_out]
    return [
        _reshape(schema, model, codes, subgraph, ids, flat_ids, [rows]),
        lookup,
        _reshape(schema, model, codes, subgraph, flat_out, out, subgraph.tensors[out].shape),
    ]
