"""Graph rewrites that let TFLite's calibrated quantizers handle a transformer.

Applied to a frozen serving graph before ``"int8"`` and ``"int16x8"`` conversion (see
:func:`rewrite_for_integer`); the rewritten graph computes the same outputs for valid
inputs (token ids are never negative, masked attention scores stay masked).
"""

import copy

import numpy as np


def rewrite_for_integer(frozen):
    """Rewrites a frozen graph so TFLite's calibrated quantizers can handle a transformer.

    Used for ``"int8"`` and ``"int16x8"``. Four patterns break them (the 16x8 quantizer
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
    * KerasHub builds its attention mask from the int32 ``padding_mask`` input
      (``minimum`` then ``> 0``); the 16x8 quantizer quantizes the comparison and stops
      on its int32 inputs ("Max and min for dynamic tensors should be recorded"). An
      int32 comparison of non-constant tensors compares them as float32 instead (exact
      below 2**24, far above any mask value or token id).

    Returns:
        ``(concrete_function, count)``: the rewritten function and how many nodes changed.

    Example:
        >>> import tensorflow as tf
        >>> from keras_llmopt._src.export.signature import frozen_function
        >>> f = tf.function(lambda x: tf.math.squared_difference(x, 1.0),
        ...                 input_signature=[tf.TensorSpec((2,), tf.float32)])
        >>> rewritten, count = rewrite_for_integer(frozen_function(f))
        >>> count, tf.nest.flatten(rewritten(tf.constant([3.0, 0.0])))[0].numpy().tolist()
        (1, [4.0, 1.0])
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
    # A pass of its own, after the one above: the token-id select pattern must still
    # see its int32 ``Less`` untouched.
    seen = {}
    for node in graph_def.node:
        if (
            node.op in _COMPARISONS
            and node.attr["T"].type == tf.int32.as_datatype_enum
            and any(_reads_an_input(nodes, name, seen) for name in node.input)
        ):
            # The 16x8 quantizer quantizes comparisons and wants a calibrated range for
            # their int32 inputs (KerasHub's padding/causal mask), which never comes.
            extra.extend(_compared_as_float(node))
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


_COMPARISONS = ("Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual")


def _reads_an_input(nodes, name, seen):
    """Whether tensor ``name`` depends on a graph input (memoized in ``seen``)."""
    stack, entered = [(_source(name), False)], set()
    while stack:
        current, inputs_done = stack.pop()
        if current in seen or current not in nodes or (current in entered and not inputs_done):
            continue
        sources = [_source(i) for i in nodes[current].input]
        if inputs_done:
            seen[current] = nodes[current].op == "Placeholder" or any(
                seen.get(source, False) for source in sources
            )
        else:
            entered.add(current)  # a v1 control-flow cycle cannot loop forever
            stack.append((current, True))
            stack.extend((source, False) for source in sources if source not in seen)
    return seen.get(_source(name), False)


def _compared_as_float(node):
    """Compares int32 inputs as float32 instead (returns the new Cast nodes)."""
    import tensorflow as tf

    casts = []
    for position, name in enumerate(node.input):
        cast = tf.compat.v1.NodeDef(name=f"{node.name}/as_float_{position}", op="Cast")
        cast.input.append(name)
        cast.attr["SrcT"].type = tf.int32.as_datatype_enum
        cast.attr["DstT"].type = tf.float32.as_datatype_enum
        node.input[position] = cast.name
        casts.append(cast)
    node.attr["T"].type = tf.float32.as_datatype_enum
    return casts


def _source(name):
    return name.lstrip("^").split(":")[0]
