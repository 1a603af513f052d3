"""Fixed-shape serving functions over a Keras model, and their frozen graphs.

The TFLite converter, given a Keras 3 model's concrete function, keeps the weights as
resource variables (``VAR_HANDLE``/``READ_VARIABLE``) that are never initialised in
the ``.tflite``: the file is a few KB and the model outputs NaN. Freezing the function
ourselves (variables -> constants) before conversion gives complete artifacts.
"""

import copy
import dataclasses

import keras
import numpy as np

from keras_llmopt._src.core.layer_tree import walk_layers


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, fixed shape (``None`` = dynamic) and dtype."""

    name: str
    shape: tuple
    dtype: str


def require_tensorflow(what):
    """Raises unless Keras runs on TensorFlow (export is TensorFlow's job)."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow backend (set KERAS_BACKEND=tensorflow). "
            f"Received: backend={backend!r}"
        )


def infer_sequence_length(model):
    """The longest input length a model takes, if the model tells it; else ``None``."""
    specs = _model_inputs(model)
    for spec in specs or ():
        if len(spec.shape) >= 2 and spec.shape[1] is not None:
            return int(spec.shape[1])
    length = getattr(model, "max_sequence_length", None)
    if isinstance(length, int) and length > 0:
        return length
    for node in walk_layers(model):
        if node.layer.name == "position_embedding" and hasattr(node.layer, "input_dim"):
            return int(node.layer.input_dim)
    return None


def token_range(model):
    """Exclusive upper bound of valid token ids: the largest Embedding's ``input_dim``."""
    dims = [
        int(node.layer.input_dim)
        for node in walk_layers(model)
        if isinstance(node.layer, keras.layers.Embedding)
    ]
    return max(dims) if dims else 2


def _model_inputs(model):
    try:
        structure = model.input
    except (AttributeError, ValueError):
        return None
    if isinstance(structure, dict):
        items = list(structure.items())
    elif isinstance(structure, (list, tuple)):
        items = [(t.name, t) for t in structure]
    else:
        items = [(structure.name, structure)]
    return [
        InputSpec(name=str(name), shape=tuple(t.shape), dtype=str(t.dtype)) for name, t in items
    ]


def input_specs(model, sequence_length=None, batch_size=1):
    """Resolves the model's inputs to shapes with a fixed batch and sequence length.

    Args:
        model: A Keras model. Functional models (the reference GPT, KerasHub backbones)
            declare their inputs; a subclassed model is taken to have one int32
            ``tokens`` input.
        sequence_length: Length for dynamic axes after the batch axis (``None``: the
            model's own, if it declares one; stays dynamic when none is found).
        batch_size: Batch axis size (``None`` keeps it dynamic).

    Returns:
        ``(specs, is_dict)``: a list of ``InputSpec`` and whether the model takes a dict.
    """
    specs = _model_inputs(model)
    is_dict = isinstance(getattr(model, "input", None), dict) if specs else False
    if specs is None:
        specs = [InputSpec("tokens", (None, None), "int32")]
    if sequence_length is None:
        sequence_length = infer_sequence_length(model)
    resolved = []
    for spec in specs:
        fixed = spec.shape[1] if len(spec.shape) > 1 else None
        if sequence_length is not None and fixed is not None and fixed != sequence_length:
            raise ValueError(
                f"Input {spec.name!r} has a fixed length {fixed}. Received: "
                f"sequence_length={sequence_length}; accepted: None or {fixed}"
            )
        shape = list(spec.shape)
        if shape:
            shape[0] = batch_size
        for axis in range(1, len(shape)):
            if shape[axis] is None:
                shape[axis] = sequence_length
        resolved.append(dataclasses.replace(spec, shape=tuple(shape)))
    return resolved, is_dict


def serving_function(model, specs, is_dict):
    """A ``tf.function`` with a fixed input signature returning ``{"output": tensor}``."""
    import tensorflow as tf

    signature = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in specs]
    names = [s.name for s in specs]

    def serve(*flat):
        if is_dict:
            inputs = dict(zip(names, flat))
        elif len(flat) == 1:
            inputs = flat[0]
        else:
            inputs = list(flat)
        return {"output": single_output(model(inputs, training=False))}

    return tf.function(serve, input_signature=signature, autograph=False)


def single_output(outputs):
    """The one output tensor of a model (a dict or list of one is unwrapped)."""
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(
                "Export needs a model with one output. Received: outputs named "
                f"{sorted(outputs)}; wrap the model so it returns the one to export."
            )
        return next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(
                f"Export needs a model with one output. Received: {len(outputs)} outputs; "
                "wrap the model so it returns the one to export."
            )
        return outputs[0]
    return outputs


def frozen_function(function):
    """Freezes a ``tf.function``'s variables into constants; returns a concrete function."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    return convert_variables_to_constants_v2(function.get_concrete_function())


def has_fake_quant(frozen):
    """Whether a frozen graph carries learned quantization ranges (a QAT model)."""
    return any(node.op.startswith("FakeQuant") for node in _all_nodes(frozen.graph.as_graph_def()))


def _all_nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def rewrite_for_integer(frozen):
    """Rewrites a frozen graph so TFLite's calibrated quantizers can handle a transformer.

    Used for ``"int8"`` and ``"int16x8"``. Three patterns break them (the 16x8 quantizer
    quantizes every ADD/SELECT it sees and needs a calibrated range for each input,
    which integer tensors never get; both calibrate every float tensor they see):

    * ``keras.ops.take`` (every Keras ``Embedding`` on TensorFlow) wraps negative ids:
      ``select(ids < 0, ids + n, ids)`` on the int32 token input -> "Empty min/max for
      tensor tokens". Token ids are never negative, so the select becomes ``ids``.
    * ``SquaredDifference`` (LayerNormalization's variance) has no int16 kernel in
      LiteRT, so the artifact fails at run time; it becomes ``(a - b) * (a - b)``.
    * Causal attention masking is ``select(mask, scores, -3.4e38)``: the calibrated
      range of the softmax input then spans 1e38, its quantization step is ~1e34 and
      every attention row turns uniform (on the reference GPT: int16x8 top-1 agreement
      0.71 -> 0.99, bits per byte +0.28 -> +0.00001). The fill becomes ``MASK_FILL``.

    Returns:
        ``(concrete_function, count)``: the rewritten function and how many nodes changed.
    """
    import tensorflow as tf

    graph_def = frozen.graph.as_graph_def()
    nodes = {n.name: n for n in graph_def.node}
    count = 0
    extra = []
    for node in graph_def.node:
        if node.op in ("Select", "SelectV2") and len(node.input) == 3:
            cond, added, ids = (nodes.get(_source(i)) for i in node.input)
            ids_name = _source(node.input[2])
            if (
                cond is not None
                and added is not None
                and cond.op == "Less"
                and added.op in ("Add", "AddV2")
                and _source(cond.input[0]) == ids_name
                and _source(added.input[0]) == ids_name
                and node.attr["T"].type in (tf.int32.as_datatype_enum, tf.int64.as_datatype_enum)
            ):
                keep = node.input[2]
                node.op = "Identity"
                del node.input[:]
                node.input.append(keep)
                for key in list(node.attr):
                    if key != "T":
                        del node.attr[key]
                count += 1
            else:
                for name in node.input[1:]:
                    if _is_mask_fill(nodes.get(_source(name))):
                        # Attention masking fills with about -3.4e38: int16 then gets a
                        # scale of ~1e34 for the softmax input and attention turns uniform.
                        _set_fill(nodes[_source(name)], MASK_FILL)
                        count += 1
        elif node.op == "SquaredDifference":
            difference = copy.deepcopy(node)
            difference.name = node.name + "/difference"
            difference.op = "Sub"
            node.op = "Mul"
            del node.input[:]
            node.input.extend([difference.name, difference.name])
            extra.append(difference)
            count += 1
    if not count:
        return frozen, 0
    graph_def.node.extend(extra)

    def _import():
        tf.graph_util.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    pruned = wrapped.prune(
        feeds=[wrapped.graph.get_tensor_by_name(t.name) for t in frozen.inputs],
        fetches=[wrapped.graph.get_tensor_by_name(t.name) for t in frozen.outputs],
    )
    return pruned, count


# Masked attention scores under int16: exp(-512 - s) is 0 in float32 for any sane
# score s, and the softmax input keeps a resolution of 512 / 32767 = 0.016.
MASK_FILL = -512.0


def _is_mask_fill(node):
    if node is None or node.op != "Const":
        return False
    import tensorflow as tf

    value = tf.make_ndarray(node.attr["value"].tensor)
    return value.dtype.kind == "f" and value.size > 0 and bool(np.all(value <= -1e4))


def _set_fill(node, fill):
    import tensorflow as tf

    value = tf.make_ndarray(node.attr["value"].tensor)
    node.attr["value"].tensor.CopyFrom(
        tf.make_tensor_proto(np.full(value.shape, fill, dtype=value.dtype))
    )


def _source(name):
    return name.lstrip("^").split(":")[0]


def sample_inputs(specs, model, num_rows, seed=0):
    """Random inputs in the model's valid range (token ids below the vocabulary size)."""
    rng = np.random.default_rng(seed)
    vocab = token_range(model)
    out = {}
    for spec in specs:
        shape = (num_rows, *spec.shape[1:])
        if "mask" in spec.name:
            out[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            out[spec.name] = rng.integers(0, vocab, size=shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return out
