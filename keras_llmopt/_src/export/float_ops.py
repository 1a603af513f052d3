"""Matmuls a full-integer ``.tflite`` would still run in float, named by their layer.

``to_tflite(quantization="int8")`` promises integer matmuls: every FULLY_CONNECTED and
BATCH_MATMUL (and convolution) reads integer inputs. The converter silently leaves an
op in float when one of its inputs has no range, so the exporter reads the op list of
the converted flatbuffer (before compaction, while the tensors still carry the traced
graph's names) and refuses the file, naming each float op and the layer it comes from,
unless the caller accepts float ops.
"""

import dataclasses
import re

from keras_llmopt._src.export.report import MATMUL_OPS

# Refused in "int8"; listed (not refused) in "int16x8", where LiteRT has no int16 GELU
# kernel: a Dense with a GELU activation computes its matmul in float there.
STRICT_MODES = ("int8",)
REPORTED_MODES = ("int8", "int16x8")
_INTEGER = ("int8", "int16", "uint8")


@dataclasses.dataclass(frozen=True)
class FloatMatmul:
    """One matmul-like op with a float input.

    Attributes:
        op: The TFLite op (``"FULLY_CONNECTED"``, ``"BATCH_MATMUL"``, ...).
        layer: The layer path it was traced from (its output tensor's name, cleaned).
        input_dtypes: The dtypes of its first two inputs.
        subgraph: The subgraph (signature) it is in, where the file has several.

    Example:
        >>> str(FloatMatmul("FULLY_CONNECTED", "gpt/block_0/mlp_down", ("float32", "int8")))
        "FULLY_CONNECTED at 'gpt/block_0/mlp_down' (inputs float32, int8)"
    """

    op: str
    layer: str
    input_dtypes: tuple
    subgraph: str = ""

    def __str__(self):
        where = f" in {self.subgraph!r}" if self.subgraph else ""
        return f"{self.op} at {self.layer!r}{where} (inputs {', '.join(self.input_dtypes)})"


_SUFFIX = re.compile(r"(_\d+)$")
_OP_TAIL = {
    "MatMul",
    "BiasAdd",
    "Add",
    "add",
    "Einsum",
    "einsum",
    "Reshape",
    "Tensordot",
    "BatchMatMulV2",
    "BatchMatMulV3",
    "FakeQuantWithMinMaxVars",
    "Relu",
}


def layer_of(tensor_name):
    """A readable layer path from a converted tensor's name.

    Example:
        >>> layer_of("functional_1/block_0_mlp_down_1/MatMul;functional_1/x/BiasAdd")
        'functional/block_0_mlp_down'
    """
    name = tensor_name.split(";")[0]
    parts = [p for p in name.split("/") if p]
    while len(parts) > 1 and (parts[-1] in _OP_TAIL or parts[-1].startswith(("MatMul", "Add"))):
        parts.pop()
    return "/".join(_SUFFIX.sub("", p) for p in parts) or tensor_name


def find_float_matmuls(content):
    """The matmul-like ops of a flatbuffer that read a float input, in every subgraph.

    A file with several signatures (a generator's ``prefill_<L>`` and ``decode``) holds
    one subgraph per signature; each is read, and a float op names its subgraph.

    Args:
        content: The ``.tflite`` bytes.

    Returns:
        A list of :class:`FloatMatmul`, in subgraph and graph order.

    Example:
        >>> from keras_llmopt import export, reference
        >>> r = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite", sequence_length=8)
        >>> len(find_float_matmuls(open(r.path, "rb").read())) > 0
        True
    """
    from tensorflow.lite.python import schema_py_generated as schema

    if not content:
        return []
    model = schema.Model.GetRootAs(bytes(content), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    several = model.SubgraphsLength() > 1
    found = []
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        where = (subgraph.Name() or b"").decode() if several else ""
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
            if name not in MATMUL_OPS:
                continue
            inputs = [int(op.Inputs(k)) for k in range(min(2, op.InputsLength()))]
            dtypes = tuple(type_names[subgraph.Tensors(t).Type()] for t in inputs if t >= 0)
            if all(d in _INTEGER for d in dtypes):
                continue
            output = (subgraph.Tensors(int(op.Outputs(0))).Name() or b"").decode()
            found.append(FloatMatmul(name, layer_of(output), dtypes, where))
    return found


def check_integer_matmuls(content, mode_name, allow_float_ops, what):
    """Refuses float matmuls in a full-integer mode; returns them (for the report).

    Raises:
        ValueError: ``mode_name`` is a full-integer mode, some matmul reads a float
            input and ``allow_float_ops`` is off; names each op and its layer.

    Example:
        >>> check_integer_matmuls(b"", None, False, "to_tflite")
        []
    """
    if mode_name not in REPORTED_MODES:
        return []
    found = find_float_matmuls(content)
    if found and not allow_float_ops and mode_name in STRICT_MODES:
        listed = "\n  ".join(str(f) for f in found[:12])
        more = f"\n  ... and {len(found) - 12} more" if len(found) > 12 else ""
        raise ValueError(
            f"{what}(quantization={mode_name!r}): {len(found)} matmul op(s) would run in "
            f"float, so the file would not be full-integer:\n  {listed}{more}\nEvery "
            "matmul input needs a quantization range: quantize the model with "
            "keras_llmopt.quantization.quantize_model (a custom layer needs a "
            "QuantizeConfig; check `ignore=`), or calibrate a float model with "
            "representative_dataset=. Pass allow_float_ops=True to accept the file with "
            "these ops in float (they are listed in the report). Nothing was written."
        )
    return found
