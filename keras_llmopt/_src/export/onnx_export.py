"""``to_onnx``: a Keras model to a verified ``.onnx`` through tf2onnx."""

import logging as std_logging

from absl import logging

from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.export import common, files, report, signature

DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 18


def to_onnx(
    model,
    path,
    opset=DEFAULT_OPSET,
    sequence_length=None,
    batch_size=None,
    num_threads=None,
    verify=True,
    tolerance=None,
    verification_data=None,
):
    """Converts a Keras model to ONNX with tf2onnx and proves it in ONNX Runtime.

    Exact GELU comes out of TensorFlow as ``Erfc``, which tf2onnx leaves as an op no
    ONNX opset defines (ONNX Runtime refuses the file); each ``Erfc(x)`` is rewritten
    to ``1 - Erf(x)``. Approximate (tanh) GELU converts as is.

    Args:
        model: A Keras model (see ``to_tflite``).
        path: Output ``.onnx`` path.
        opset: ONNX opset, ``13..18``.
        sequence_length: Fixed input length (default: the model's own; dynamic if it
            has none).
        batch_size: Fixed batch size (default ``None``: dynamic).
        num_threads: ONNX Runtime threads used to verify.
        verify: Run in ONNX Runtime and compare with Keras (float32 tolerance: max abs
            error <= 1e-3 + 1e-3 * max|output|, top-1 >= 0.99); a mismatch raises
            ``VerificationError`` and writes nothing.
        tolerance: Dict overriding tolerance keys (``atol``, ``rtol``, ``top1``, ``bpb``).
        verification_data: Token ids, a dict, or ``(inputs, targets)``; default 4 random
            rows (length: ``sequence_length``, the model's, or 16).

    Returns:
        An ``ExportReport``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> report = export.to_onnx(reference.build_gpt("tiny"), "gpt.onnx")
        >>> report.verification.max_abs_error < 1e-4
        True
    """
    common.check_model(model, "to_onnx")
    path = files.check_path(path)
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"Unsupported ONNX opset. Received: opset={opset!r}; accepted: an int from "
            f"{MIN_OPSET} to {MAX_OPSET}"
        )
    common.check_positive_int("sequence_length", sequence_length)
    common.check_positive_int("batch_size", batch_size)
    common.check_positive_int("num_threads", num_threads)
    common.check_bool("verify", verify)
    if tolerance is not None:
        from keras_llmopt._src.export.verification import resolve_tolerance

        resolve_tolerance("float32", tolerance)

    import tf2onnx

    inputs = describe_inputs(model, sequence_length, batch_size)
    function = frozen_serving_function(model, inputs)
    logging.info("to_onnx: converting %s with tf2onnx (opset %d)", model.name, opset)
    tf2onnx_logger = std_logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(std_logging.CRITICAL)  # it logs Erfc as unsupported; we fix it
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset
        )
    finally:
        tf2onnx_logger.setLevel(level)
    notes = []
    rewritten = replace_erfc(proto)
    _check(proto)
    check_graph_inputs(proto, inputs.names)
    if rewritten:
        notes.append(f"rewrote {rewritten} Erfc nodes as 1 - Erf (exact GELU)")
    verify_inputs = inputs
    if verification_data is None and inputs.has_dynamic_length:
        verify_inputs = describe_inputs(model, 16, batch_size)

    check = common.staged_check(
        verify,
        path,
        model,
        verify_inputs,
        verification_data,
        tolerance,
        "float32",
        "ONNX export",
        num_threads,
    )
    verification = files.publish(path, files.bytes_writer(proto.SerializeToString()), check)
    result = report.ExportReport(
        path=path,
        format="onnx",
        quantization=None,
        size_bytes=report.artifact_size(path),
        num_parameters=int(model.count_params()),
        summary=report.onnx_summary(proto),
        verification=verification,
        notes=tuple(notes),
    )
    logging.info("to_onnx: wrote %s (%d bytes)", path, result.size_bytes)
    return result


def frozen_serving_function(model, inputs):
    """The serving ``tf.function`` with every captured value frozen into the graph.

    tf2onnx turns each tensor a function captures (a model's constant, e.g. position
    ids built with ``keras.ops.arange(T)`` in a functional model) into an extra graph
    input; freezing first makes weights and constants initializers, so the graph's
    inputs are exactly the model's.

    Example:
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny")
        >>> serve = frozen_serving_function(model, describe_inputs(model, 8, 1))
        >>> serve.get_concrete_function().captured_inputs
        []
    """
    import tensorflow as tf

    serving = signature.serving_function(model, inputs)
    frozen = signature.frozen_function(serving)

    def serve(*flat):
        outputs = tf.nest.flatten(frozen(*flat))
        return {signature.OUTPUT_NAME: outputs[0]}

    return tf.function(serve, input_signature=serving.input_signature, autograph=False)


def check_graph_inputs(proto, names):
    """Raises ``RuntimeError`` unless the ONNX graph's inputs are exactly ``names``.

    Example:
        >>> from onnx import TensorProto, helper
        >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
        >>> c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])
        >>> graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x, c],
        ...                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        >>> check_graph_inputs(helper.make_model(graph), ("x",))
        Traceback (most recent call last):
        ...
        RuntimeError: to_onnx: the ONNX graph's inputs are ['x', 'c'], not the model's ...
    """
    initializers = {tensor.name for tensor in proto.graph.initializer}
    found = [value.name for value in proto.graph.input if value.name not in initializers]
    if sorted(found) != sorted(names):
        raise RuntimeError(
            f"to_onnx: the ONNX graph's inputs are {found}, not the model's inputs "
            f"{list(names)} (tf2onnx made a constant or state of the model a graph input); "
            "nothing was written"
        )


def replace_erfc(proto):
    """Rewrites every ``Erfc(x)`` node of an ONNX graph as ``Sub(1, Erf(x))`` in place.

    Returns:
        How many nodes were rewritten.

    Example:
        >>> from onnx import TensorProto, helper
        >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
        >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
        >>> node = helper.make_node("Erfc", ["x"], ["y"])
        >>> proto = helper.make_model(helper.make_graph([node], "g", [x], [y]))
        >>> replace_erfc(proto)
        1
        >>> sorted(n.op_type for n in proto.graph.node)
        ['Erf', 'Sub']
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    nodes = list(graph.node)
    if not any(n.op_type == "Erfc" for n in nodes):
        return 0
    one_name = "keras_llmopt/erfc_one"
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one_name))
    new_nodes = []
    count = 0
    for node in nodes:
        if node.op_type != "Erfc":
            new_nodes.append(node)
            continue
        erf_out = node.output[0] + "/erf"
        new_nodes.append(
            helper.make_node("Erf", [node.input[0]], [erf_out], name=node.name + "/erf")
        )
        new_nodes.append(
            helper.make_node("Sub", [one_name, erf_out], list(node.output), name=node.name)
        )
        count += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return count


def _check(proto):
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as error:
        raise RuntimeError(
            f"to_onnx: tf2onnx produced an invalid ONNX model (an op it could not convert?): "
            f"{error}"
        ) from error
