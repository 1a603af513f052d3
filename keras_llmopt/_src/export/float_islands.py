"""Runs the int8 ops XNNPACK has no kernel for in float32, inside XNNPACK.

LiteRT's XNNPACK delegate takes int8 FULLY_CONNECTED, BATCH_MATMUL, ADD, MUL and the
other ops of a full-integer transformer, but not int8 SOFTMAX or GELU: those fall back
to LiteRT's builtin integer kernels, between XNNPACK partitions. On the reference
``small`` GPT (1 thread, this repository's 2-core AVX512-VNNI machine) the four int8
SOFTMAX ops took about 0.4-0.7 ms of a 2.6 ms int8 forward pass and the four GELU ops
about 0.2 ms. XNNPACK's float32 SOFTMAX and GELU are fast, so each such op is rewritten
as DEQUANTIZE -> the same op in float32 -> QUANTIZE (to the op's own output scale):
every matmul still reads int8, and the benchmark's ``klo_qat_int8`` row is timed beside
``tflite_dynamic_int8`` in the same run. ``to_tflite(..., integer_only=True)`` keeps
every op integer (accelerators and microcontrollers that run no float).
"""

from keras_llmopt._src.export import flatbuffer_edit

# Ops rewritten: int8 in and out, no XNNPACK int8 kernel, a fast XNNPACK float kernel.
FLOAT_ISLAND_OPS = ("SOFTMAX", "GELU")


def run_in_float(content, ops=FLOAT_ISLAND_OPS):
    """Rewrites each int8 ``ops`` op as DEQUANTIZE -> float32 op -> QUANTIZE.

    The op keeps its options (softmax beta, GELU approximation); its int8 output
    tensor, scale and zero point are unchanged, so consumers see the same kind of
    codes (float rounding instead of the integer kernel's lookup tables).

    Args:
        content: A ``.tflite`` flatbuffer (bytes).
        ops: Builtin operator names to rewrite.

    Returns:
        ``(content, count)``: the rewritten flatbuffer (the input itself when nothing
        matched or the file cannot be rewritten) and how many ops were rewritten.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import export, quantization, reference
        >>> q = quantization.quantize_model(reference.build_gpt("tiny"))
        >>> _ = quantization.calibrate(q, np.random.randint(0, 256, (8, 64)))
        >>> _ = export.to_tflite(q, "int8.tflite", quantization="int8", integer_only=True)
        >>> content, count = run_in_float(open("int8.tflite", "rb").read())
        >>> count  # one SOFTMAX per attention layer, one GELU per MLP, 2 layers
        4
    """
    schema, model = flatbuffer_edit.read_model(content, "float islands")
    if model is None:
        return content, 0
    builtin = schema.BuiltinOperator
    targets = {getattr(builtin, name) for name in ops}
    codes = [flatbuffer_edit.op_code(c) for c in model.operatorCodes]
    int8 = schema.TensorType.INT8
    count = 0
    for subgraph in model.subgraphs or []:
        rewritten = []
        for op in subgraph.operators or []:
            tensors = subgraph.tensors
            if (
                codes[op.opcodeIndex] in targets
                and len(op.outputs) == 1
                and tensors[op.inputs[0]].type == int8
                and tensors[op.outputs[0]].type == int8
            ):
                rewritten.extend(_island(schema, model, subgraph, op, codes))
                count += 1
            else:
                rewritten.append(op)
        subgraph.operators = rewritten
    if not count:
        return content, 0
    return flatbuffer_edit.pack_model(model, len(content)), count


def _float_twin(schema, subgraph, index):
    source = subgraph.tensors[index]
    twin = schema.TensorT()
    twin.shape = None if source.shape is None else list(source.shape)
    twin.shapeSignature = None if source.shapeSignature is None else list(source.shapeSignature)
    twin.type = schema.TensorType.FLOAT32
    twin.buffer = 0
    twin.name = (source.name or b"t") + b"/f32"
    subgraph.tensors.append(twin)
    return len(subgraph.tensors) - 1


def _island(schema, model, subgraph, op, codes):
    builtin = schema.BuiltinOperator
    x, y = op.inputs[0], op.outputs[0]
    x_float, y_float = _float_twin(schema, subgraph, x), _float_twin(schema, subgraph, y)
    dequantize = schema.OperatorT()
    dequantize.opcodeIndex = flatbuffer_edit.opcode_index(schema, model, codes, builtin.DEQUANTIZE)
    dequantize.inputs, dequantize.outputs = [x], [x_float]
    quantize = schema.OperatorT()
    quantize.opcodeIndex = flatbuffer_edit.opcode_index(schema, model, codes, builtin.QUANTIZE)
    quantize.inputs, quantize.outputs = [y_float], [y]
    op.inputs = [x_float] + list(op.inputs[1:])
    op.outputs = [y_float]
    return [dequantize, op, quantize]
