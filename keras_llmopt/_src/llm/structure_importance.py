"""How much each head, MLP channel and block matters, from calibration data or weights.

- ``activation`` (Minitron): a head's or channel's input to its output projection, as
  an L2 norm over the calibration tokens, times the norm of the projection weights it
  meets (per head: summed over its channels).
- ``taylor`` (LLM-Pruner): ``|sum(w * dL/dw)|`` over the structure's weights, the
  first-order change of the next-token loss when the structure is zeroed.
- ``magnitude``: the L2 norm of the structure's weights.
- ``block_influence`` (ShortGPT): ``1 - cos(block input, block output)`` averaged over
  tokens; a block that barely changes the stream matters least.

Inputs are captured through the core call hook; the model is never edited.
"""

import contextlib

import keras
import numpy as np

from keras_llmopt._src.core import hooks
from keras_llmopt._src.llm import gradients, structures


def _numpy(x):
    return keras.ops.convert_to_numpy(x).astype("float64")


def _kernel(layer):
    return _numpy(layer.kernel)


def _norm_except(array, axes):
    keep = tuple(a % array.ndim for a in axes)
    other = tuple(a for a in range(array.ndim) if a not in keep)
    return np.sqrt(np.square(array).sum(axis=other))


def _head_weight_norms(attention):
    """``(H, head_dim)`` norms of each output-projection row met by a head channel."""
    head_axis, channel_axis = structures.einsum_head_axes(attention.output, "input")
    norms = _norm_except(_kernel(attention.output), (head_axis, channel_axis))
    return norms if head_axis < channel_axis else norms.T


def _slice_sq(layer, side, count):
    """Squared norm per head of a projection's kernel, shape ``(count,)``."""
    head_axis, _ = structures.einsum_head_axes(layer, side)
    kernel = _kernel(layer)
    squares = np.square(kernel).sum(axis=tuple(a for a in range(kernel.ndim) if a != head_axis))
    return squares[:count]


def _run(model, batches):
    for batch in batches:
        model(batch, training=False)


def _activation(model, batches, attention, mlps, notes):
    sums = {}

    def on_call(path, args, kwargs):
        x = _numpy(args[0] if args else next(iter(kwargs.values())))
        keep = 2 if path.startswith("attention:") else 1
        total = np.square(x).reshape((-1, *x.shape[x.ndim - keep :])).sum(axis=0)
        sums[path] = sums.get(path, 0.0) + total

    layers = {f"attention:{a.path}": a.output for a in attention}
    layers.update({f"mlp:{m.path}": m.down for m in mlps})
    with hooks.capture_inputs(layers, on_call=on_call):
        _run(model, batches)
    # A block may read a projection's kernel without calling the layer (Gemma 4's MLP
    # does): its inputs are never seen, so those structures fall back to magnitude.
    unseen_a = [a for a in attention if f"attention:{a.path}" not in sums]
    unseen_m = [m for m in mlps if f"mlp:{m.path}" not in sums]
    heads, channels = _magnitude(unseen_a, unseen_m)
    for record in unseen_a + unseen_m:
        notes.append(
            f"{record.path}: its projection is never called as a layer (its kernel is read "
            "directly), so its importance is by weight magnitude"
        )
    for a in attention:
        if a not in unseen_a:
            per_channel = np.sqrt(sums[f"attention:{a.path}"]) * _head_weight_norms(a)
            heads[a.path] = per_channel.sum(axis=1)
    for m in mlps:
        if m not in unseen_m:
            rows = np.sqrt(np.square(_kernel(m.down)).sum(axis=1))
            channels[m.path] = np.sqrt(sums[f"mlp:{m.path}"]) * rows
    return heads, channels


def _magnitude(attention, mlps):
    heads = {}
    for a in attention:
        per_head = _slice_sq(a.query, "output", a.num_heads) + _slice_sq(
            a.output, "input", a.num_heads
        )
        heads[a.path] = np.sqrt(per_head)
    channels = {}
    for m in mlps:
        squares = np.square(_kernel(m.down)).sum(axis=1)
        for up in m.ups:
            squares = squares + np.square(_kernel(up)).sum(axis=0)
        channels[m.path] = np.sqrt(squares)
    return heads, channels


def _taylor(model, batches, attention, mlps):
    variables = [a.query.kernel for a in attention] + [a.output.kernel for a in attention]
    variables += [m.down.kernel for m in mlps] + [u.kernel for m in mlps for u in m.ups]
    grads = gradients.loss_gradients(model, batches, variables)
    products = {id(v): _numpy(v) * g for v, g in zip(variables, grads)}

    def per_head(layer, side, count):
        head_axis, _ = structures.einsum_head_axes(layer, side)
        p = products[id(layer.kernel)]
        return p.sum(axis=tuple(a for a in range(p.ndim) if a != head_axis))[:count]

    heads = {
        a.path: np.abs(
            per_head(a.query, "output", a.num_heads) + per_head(a.output, "input", a.num_heads)
        )
        for a in attention
    }
    channels = {}
    for m in mlps:
        total = products[id(m.down.kernel)].sum(axis=1)
        for up in m.ups:
            total = total + products[id(up.kernel)].sum(axis=0)
        channels[m.path] = np.abs(total)
    return heads, channels


def width_importance(model, batches, attention, mlps, method, notes=None):
    """``({attention path: (H,) scores}, {mlp path: (F,) scores})``; higher matters more.

    ``notes`` (a list) receives a line per structure scored otherwise than asked.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm import structures_graph
        >>> model = reference.build_gpt("tiny")
        >>> found = structures_graph.graph_structures(model)
        >>> heads, channels = width_importance(model, [np.zeros((2, 8), "int32")],
        ...                                    found.attention, found.mlps, "activation")
        >>> heads["block_0_attention"].shape, channels["block_1_mlp_down"].shape
        ((2,), (256,))
    """
    if method == "activation":
        return _activation(model, batches, attention, mlps, [] if notes is None else notes)
    if method == "taylor":
        return _taylor(model, batches, attention, mlps)
    return _magnitude(attention, mlps)


@contextlib.contextmanager
def block_calls(blocks, record):
    """Within the block, every call of a KerasHub block runs ``record(index, input, output)``.

    Example:
        >>> with block_calls([], print):
        ...     pass
    """

    def wrapper(index):
        def make(original):
            def hooked(*args, **kwargs):
                result = original(*args, **kwargs)
                first = result[0] if isinstance(result, tuple | list) else result
                record(index, hooks_first_input(args, kwargs), first)
                return result

            return hooked

        return make

    with contextlib.ExitStack() as stack:
        for block in blocks:
            stack.enter_context(hooks.intercept(block.layer, "call", wrapper(block.index)))
        yield


def hooks_first_input(args, kwargs):
    """The first positional argument of a call, or its first keyword value.

    Example:
        >>> hooks_first_input((), {"hidden_states": 3})
        3
    """
    if args:
        return args[0]
    for key in ("inputs", "x", "hidden_states", "decoder_sequence"):
        if key in kwargs:
            return kwargs[key]
    return next(iter(kwargs.values()))


def _cosine_gap(x, y):
    x, y = _numpy(x).reshape(-1, x.shape[-1]), _numpy(y).reshape(-1, y.shape[-1])
    cos = (x * y).sum(axis=1) / np.maximum(
        np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12
    )
    return float((1.0 - cos).sum()), len(cos)


def block_influence(model, batches, blocks):
    """``1 - cos(input, output)`` of each block, averaged over calibration tokens.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm import structures_graph
        >>> model = reference.build_gpt("tiny")
        >>> found = structures_graph.graph_structures(model)
        >>> scores = block_influence(model, [np.zeros((2, 8), "int32")], found.blocks)
        >>> scores.shape
        (2,)
    """
    gaps, counts = np.zeros(len(blocks)), np.zeros(len(blocks))

    def record(index, x, y):
        gap, count = _cosine_gap(x, y)
        gaps[index] += gap
        counts[index] += count

    if blocks and blocks[0].layer is not None:
        with block_calls(blocks, record):
            _run(model, batches)
    else:
        tensors = [t for block in blocks for t in block.stream]
        probe = keras.Model(model.input, tensors)
        for batch in batches:
            values = probe(batch, training=False)
            for block in blocks:
                record(block.index, values[2 * block.index], values[2 * block.index + 1])
    return gaps / np.maximum(counts, 1)


def block_magnitude(blocks):
    """Root mean square of each block's weights.

    Example:
        >>> block_magnitude([]).shape
        (0,)
    """
    scores = []
    for block in blocks:
        values = [_numpy(w).ravel() for layer in block.layers for w in layer.weights]
        joined = np.concatenate(values) if values else np.zeros(1)
        scores.append(float(np.sqrt(np.mean(np.square(joined)))))
    return np.asarray(scores)
