"""Constant SELECT_V2 conditions stored once per repeated axis (a lossless size rewrite).

Keras's causal attention mask reaches the converter broadcast to every head, so the
``.tflite`` of the reference ``small`` GPT stores a ``[1, 4, 128, 128]`` boolean constant
(64 KiB, 3 % of an int4 file) whose four heads are equal. SELECT_V2 broadcasts its
inputs, so a constant condition whose values repeat along an axis that another input
already spans computes the same output with that axis of size 1.
"""

import numpy as np

from keras_llmopt._src.export import flatbuffer_edit


def shrink_select_conditions(content):
    """Stores every repeated axis of constant SELECT_V2 conditions once.

    Args:
        content: A ``.tflite`` flatbuffer (bytes).

    Returns:
        ``(content, saved)``: the rewritten flatbuffer (the input itself when nothing
        shrank or the file cannot be read) and the bytes of constant data saved.

    Example:
        >>> import tensorflow as tf
        >>> mask = tf.constant(np.tril(np.ones((4, 8, 8), bool)))
        >>> f = tf.function(lambda x: tf.where(mask, x, -1.0), [tf.TensorSpec((4, 8, 8))])
        >>> c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        >>> content, saved = shrink_select_conditions(c.convert())
        >>> saved
        192
    """
    schema, model = flatbuffer_edit.read_model(content, "select conditions")
    if model is None:
        return content, 0
    select = schema.BuiltinOperator.SELECT_V2
    codes = [flatbuffer_edit.op_code(c) for c in model.operatorCodes]
    uses = {}  # buffer -> [(subgraph, op, input position)]
    for subgraph in model.subgraphs or []:
        for op in subgraph.operators or []:
            for position, index in enumerate(op.inputs):
                if index >= 0:
                    uses.setdefault(subgraph.tensors[index].buffer, []).append(
                        (subgraph, op, position, codes[op.opcodeIndex] == select)
                    )
    saved = 0
    for buffer_index, found in uses.items():
        buffer = model.buffers[buffer_index] if buffer_index < len(model.buffers) else None
        if buffer is None or buffer.data is None or not len(buffer.data):
            continue
        if not all(is_select and position == 0 for _, _, position, is_select in found):
            continue
        shrunk = _shrunk(schema, buffer, found)
        if shrunk is not None:
            saved += len(buffer.data) - shrunk.size
            buffer.data = shrunk.reshape(-1).view(np.uint8)
            for subgraph, op, _, _ in found:
                tensor = subgraph.tensors[op.inputs[0]]
                tensor.shape = list(shrunk.shape)
                tensor.shapeSignature = None
    if not saved:
        return content, 0
    return flatbuffer_edit.pack_model(model, len(content)), saved


def _shrunk(schema, buffer, found):
    """The condition with each repeated, otherwise-spanned axis cut to 1, or ``None``."""
    first = found[0][0].tensors[found[0][1].inputs[0]]
    if first.type != schema.TensorType.BOOL or first.shape is None:
        return None
    shape = [int(s) for s in first.shape]
    if len(buffer.data) != int(np.prod(shape)):
        return None
    values = np.asarray(buffer.data, np.uint8).view(np.bool_).reshape(shape)
    for subgraph, op, _, _ in found:
        if [int(s) for s in subgraph.tensors[op.inputs[0]].shape] != shape:
            return None
    for axis in range(len(shape)):
        if values.shape[axis] == 1 or not _spanned(found, axis, shape):
            continue
        head = np.take(values, [0], axis=axis)
        if np.array_equal(np.broadcast_to(head, values.shape), values):
            values = head
    return None if values.shape == tuple(shape) else np.ascontiguousarray(values)


def _spanned(found, axis, shape):
    """Whether, in every use, another input of the op has this axis's full size."""
    offset = len(shape) - axis  # axes align from the right under broadcasting
    for subgraph, op, _, _ in found:
        others = [subgraph.tensors[i].shape for i in op.inputs[1:] if i >= 0]
        if not any(
            s is not None and len(s) >= offset and s[-offset] == shape[axis] for s in others
        ):
            return False
    return True
