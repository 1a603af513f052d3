"""The prunable structures of a model: attention heads, MLP channels, residual blocks.

Found once per model by one of two finders (``structures_graph`` for functional and
Sequential models, ``structures_hub`` for KerasHub CausalLMs); importance scoring and
rebuilding read only these records, never the model's layer names.
"""

import dataclasses
import math

import keras

from keras_llmopt._src.core import layer_tree


@dataclasses.dataclass
class Attention:
    """One attention layer's heads.

    Attributes:
        path: The attention layer's path.
        layer: The attention layer.
        query, key, value, output: Its projection sub-layers (EinsumDense).
        num_heads: Query heads.
        num_kv_heads: Key/value heads (groups); ``num_heads`` without GQA.
        head_dim: Channels per head.
        block: Index of the block it belongs to (``None`` if unknown).
    """

    path: str
    layer: keras.layers.Layer
    query: keras.layers.Layer
    key: keras.layers.Layer
    value: keras.layers.Layer
    output: keras.layers.Layer
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block: int | None = None

    @property
    def group_size(self):
        return self.num_heads // self.num_kv_heads


@dataclasses.dataclass
class MLP:
    """One MLP's channels: the up (and gate) projections and the down projection.

    Attributes:
        path: The down projection's path.
        ups: Layers writing the channels (up, and gate for gated MLPs).
        down: The layer reading them.
        width: Channels.
        block: Index of the block it belongs to.
    """

    path: str
    ups: list
    down: keras.layers.Layer
    width: int
    block: int | None = None


@dataclasses.dataclass
class Block:
    """One residual block (a transformer layer).

    Attributes:
        index: Position in the stack.
        path: A readable name (the transformer layer's path, or the block's first layer).
        layers: The layers only this block uses.
        parameters: Their parameter count.
        layer: The transformer layer (KerasHub), else ``None``.
        adds: ``[(add operation, index of its residual input)]`` (graph models): the
            residual additions a rebuild skips to remove the block.
        stream: ``(input, output)`` KerasTensors of the block (graph models).
    """

    index: int
    path: str
    layers: list
    parameters: int
    layer: keras.layers.Layer | None = None
    adds: list = dataclasses.field(default_factory=list)
    stream: tuple | None = None


@dataclasses.dataclass
class Structures:
    """Everything prunable that was found, and how the model is rebuilt.

    Attributes:
        kind: ``"graph"`` (functional / Sequential) or ``"keras_hub"``.
        attention: One :class:`Attention` per attention layer.
        mlps: One :class:`MLP` per MLP.
        blocks: The residual blocks, in order.
        notes: Why some structures were not found (``{what: reason}``).
    """

    kind: str
    attention: list
    mlps: list
    blocks: list
    notes: dict = dataclasses.field(default_factory=dict)


def einsum_head_axes(layer, side):
    """``(kernel head axis, kernel head-dim axis)`` of an attention projection.

    ``side="output"`` for query / key / value (heads are the output's last two axes),
    ``"input"`` for the output projection (heads are its input's last two axes).

    Example:
        >>> dense = keras.layers.EinsumDense("abc,cde->abde", (None, 4, 8))
        >>> einsum_head_axes(dense, "output")
        (1, 2)
    """
    parts = layer_tree.einsum_parts(layer)
    if parts is None:
        return None
    inputs, kernel, output = parts
    letters = output if side == "output" else inputs
    if len(letters) < 3 or "." in letters:
        return None
    head, channel = letters[-2], letters[-1]
    if head not in kernel or channel not in kernel:
        return None
    return kernel.index(head), kernel.index(channel)


def kernel_size(layer, axis):
    """Size of ``layer.kernel`` along ``axis``.

    Example:
        >>> dense = keras.layers.Dense(3)
        >>> dense.build((None, 2))
        >>> kernel_size(dense, 1)
        3
    """
    return int(layer.kernel.shape[axis])


def parameters_of(layers):
    """Parameters of ``layers`` (each counted once).

    Example:
        >>> dense = keras.layers.Dense(3)
        >>> dense.build((None, 2))
        >>> parameters_of([dense, dense])
        9
    """
    seen, total = set(), 0
    for layer in layers:
        for weight in layer.weights:
            if id(weight) not in seen:
                seen.add(id(weight))
                total += math.prod(int(d) for d in weight.shape)
    return total


def attention_of(path, layer, query, key, value, output, block=None):
    """An :class:`Attention` from its projections, or ``None`` if their axes are not heads.

    Example:
        >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
        >>> x = keras.ops.ones((1, 3, 8))
        >>> _ = mha(x, x)
        >>> a = attention_of("mha", mha, mha._query_dense, mha._key_dense,
        ...                  mha._value_dense, mha._output_dense)
        >>> a.num_heads, a.num_kv_heads, a.head_dim
        (2, 2, 4)
    """
    axes = [einsum_head_axes(p, "output") for p in (query, key, value)]
    out_axes = einsum_head_axes(output, "input")
    if any(a is None for a in axes) or out_axes is None:
        return None
    num_heads = kernel_size(query, axes[0][0])
    num_kv = kernel_size(key, axes[1][0])
    if kernel_size(value, axes[2][0]) != num_kv or kernel_size(output, out_axes[0]) != num_heads:
        return None
    if num_heads % num_kv:
        return None
    head_dim = kernel_size(query, axes[0][1])
    return Attention(path, layer, query, key, value, output, num_heads, num_kv, head_dim, block)
