"""What an export produced: size, ops and dtypes, and the verification figures."""

import collections
import dataclasses
import os

import numpy as np

from keras_llmopt._src.export.runtime import clean_name

# Ops whose input dtypes tell which kernels run (float, int8-weight, full-integer).
MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """The result of one ``to_*`` export.

    Attributes:
        path: Where the artifact was written.
        format: ``"tflite"``, ``"onnx"`` or ``"saved_model"``.
        quantization: The TFLite mode (``None`` for float32 and other formats).
        size_bytes: Size on disk (a SavedModel: all its files).
        num_parameters: The Keras model's parameter count.
        summary: Op and dtype summary: ``ops`` (count by op name), ``matmul_inputs`` (for
            matmul-like ops, count by their input dtypes), ``inputs``, ``output``, and
            for TFLite ``sparse_tensors`` and ``signatures`` (``{key: {"inputs": [...],
            "outputs": [...]}}``, the file's SignatureDefs).
        verification: A ``VerificationReport`` or ``None`` when ``verify=False``.
        notes: Anything the exporter changed or worked around, in words.

    Example:
        >>> from keras_llmopt import export, reference
        >>> report = export.to_tflite(
        ...     reference.build_gpt("tiny"), "gpt.tflite", quantization="dynamic_int8",
        ...     sequence_length=16)
        >>> report.format, report.quantization, report.verification.passed
        ('tflite', 'dynamic_int8', True)
    """

    path: str
    format: str
    quantization: str | None
    size_bytes: int
    num_parameters: int
    summary: dict
    verification: object = None
    notes: tuple = ()

    def to_dict(self):
        """The report as plain data.

        Example:
            >>> import json
            >>> from keras_llmopt import export, reference
            >>> report = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite",
            ...                           sequence_length=16)
            >>> data = json.loads(json.dumps(report.to_dict(), default=str))
            >>> data["size_bytes"] == report.size_bytes, data["verification"]["passed"]
            (True, True)
        """
        out = dataclasses.asdict(self)
        out["verification"] = self.verification.to_dict() if self.verification else None
        return out


def artifact_size(path):
    """Bytes on disk of a file, or of every file under a folder."""
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(path)
            for name in names
        )
    return os.path.getsize(path)


def tflite_summary(path):
    """Counts ops by name and the input dtypes of matmul-like ops of a ``.tflite``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=path,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = collections.Counter()
    matmul = collections.defaultdict(collections.Counter)
    for op in interpreter._get_ops_details():
        ops[op["op_name"]] += 1
        if op["op_name"] in MATMUL_OPS:
            dtypes = ",".join(
                np.dtype(tensors[i]["dtype"]).name for i in op["inputs"][:2] if i in tensors
            )
            matmul[op["op_name"]][dtypes] += 1
    sparse = sum(1 for t in tensors.values() if t.get("sparsity_parameters"))
    inputs = [
        (clean_name(d["name"]), np.dtype(d["dtype"]).name, tuple(int(x) for x in d["shape"]))
        for d in interpreter.get_input_details()
    ]
    output = interpreter.get_output_details()[0]
    return {
        "signatures": {
            key: {"inputs": list(io["inputs"]), "outputs": list(io["outputs"])}
            for key, io in interpreter.get_signature_list().items()
        },
        "ops": dict(ops.most_common()),
        "matmul_inputs": {k: dict(v) for k, v in matmul.items()},
        "sparse_tensors": sparse,
        "inputs": inputs,
        "output": (np.dtype(output["dtype"]).name, tuple(int(x) for x in output["shape"])),
    }


def xnnpack_fallback_ops(path):
    """Ops of a ``.tflite`` that LiteRT's XNNPACK delegate leaves to the builtin kernels.

    Each delegated op is made its own delegate node (node fusion off), so an op whose
    outputs no delegate node produces ran on a builtin kernel. One of those can cost
    more than the whole delegated graph (an int8 BATCH_MATMUL whose right-hand operand
    has a non-zero zero point: about 20x slower than in XNNPACK).

    Returns:
        ``{"op_name(input dtypes)": count}``; empty when everything is delegated.

    Example:
        >>> from keras_llmopt import export, reference
        >>> _ = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite", sequence_length=16)
        >>> fallback = xnnpack_fallback_ops("gpt.tflite")  # the causal mask, the embedding
        >>> any(op.startswith(("FULLY_CONNECTED", "BATCH_MATMUL")) for op in fallback)
        False
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, experimental_disable_delegate_node_fusion=True)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    delegated = {tuple(op["outputs"]) for op in ops if op["op_name"] == "DELEGATE"}
    fallback = collections.Counter()
    for op in ops:
        if op["op_name"] == "DELEGATE" or tuple(op["outputs"]) in delegated:
            continue
        dtypes = ",".join(np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i in tensors)
        fallback[f"{op['op_name']}({dtypes})"] += 1
    return dict(fallback.most_common())


def onnx_summary(model_proto):
    """Counts ops by type and initializer dtypes of an ONNX model."""
    import onnx

    ops = collections.Counter(node.op_type for node in model_proto.graph.node)
    weights = collections.Counter(
        onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        for init in model_proto.graph.initializer
    )

    def _shape(value):
        dims = value.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)

    def _dtype(value):
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    return {
        "ops": dict(ops.most_common()),
        "initializer_dtypes": dict(weights),
        "inputs": [(v.name, _dtype(v), _shape(v)) for v in model_proto.graph.input],
        "output": (_dtype(model_proto.graph.output[0]), _shape(model_proto.graph.output[0])),
    }
