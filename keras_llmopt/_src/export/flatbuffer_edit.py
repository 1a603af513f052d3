"""Reading, editing and re-packing a ``.tflite`` through the flatbuffer object API.

The op rewrites (``float_islands``, ``embedding_lookup``, ``broadcast_constants``) share
this: an unreadable file, or one whose data lives after the flatbuffer (over 2 GB: a
re-pack would drop it), is left as it is.
"""

from absl import logging


def read_model(content, what):
    """``(schema, ModelT)`` of ``content``, or ``(None, None)`` when it cannot be rewritten.

    Example:
        >>> read_model(b"not a flatbuffer", "example")
        (None, None)
    """
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytes(content), 0))
    except Exception as error:
        logging.warning("%s: cannot read the flatbuffer (%s); left as is", what, error)
        return None, None
    if any((buffer.offset or 0) > 1 for buffer in model.buffers or []):
        logging.info("%s: buffers stored outside the flatbuffer; left as is", what)
        return None, None
    return schema, model


def pack_model(model, size_hint):
    """The ``.tflite`` bytes of an edited ``ModelT``.

    Example:
        >>> schema, model = read_model(tflite_bytes, "example")  # doctest: +SKIP
        >>> pack_model(model, len(tflite_bytes))[4:8]  # doctest: +SKIP
        b'TFL3'
    """
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_code(operator_code):
    """The builtin code of an ``OperatorCodeT`` (codes above 127 live in builtinCode only).

    Example:
        >>> class Code:
        ...     builtinCode, deprecatedBuiltinCode = 150, 127
        >>> op_code(Code())
        150
    """
    return max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)


def opcode_index(schema, model, codes, code):
    """The index of builtin ``code`` in ``model.operatorCodes``, added when missing.

    Example:
        >>> schema, model = read_model(tflite_bytes, "example")  # doctest: +SKIP
        >>> codes = [op_code(c) for c in model.operatorCodes]  # doctest: +SKIP
        >>> opcode_index(schema, model, codes, schema.BuiltinOperator.RESHAPE)  # doctest: +SKIP
        3
    """
    if code in codes:
        return codes.index(code)
    entry = schema.OperatorCodeT()
    entry.builtinCode = code
    entry.deprecatedBuiltinCode = min(code, 127)
    entry.version = 1
    model.operatorCodes.append(entry)
    codes.append(code)
    return len(codes) - 1
