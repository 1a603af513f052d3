"""KV-cached self-attention for ``keras.layers.MultiHeadAttention``, swapped in for a call.

A decoding step runs the model on the new tokens only. Inside that call each causal
self-attention layer projects the new tokens' query, key and value as usual (through
its own sub-layers, so pruning masks, clustered weights and QAT fake quantization
apply), then its key and value are written into the layer's cache at ``input_pos``
and the query attends to the whole cache under a mask that lets position ``p`` see
slots ``0..p`` only. The layer's own ``_compute_attention`` (Keras's, or the
quantized one QAT installed) computes that attention, so its quantizers see the
same tensors as in a full forward pass.

The hooks are instance attributes set for the duration of one ``with`` block and
always removed after (:func:`keras_llmopt._src.core.hooks.intercept`). Attention
calls take cache slots in call order, one per call, so a layer called twice has two.
"""

import contextlib
import dataclasses

import keras
from keras import ops

from keras_llmopt._src.core import hooks, keras_compat, layer_state
from keras_llmopt._src.core.keras_compat import attention_internals
from keras_llmopt._src.core.layer_tree import walk_layers


class CachedDecodingError(ValueError):
    """A model cannot be decoded with a KV cache; the message says why.

    Example:
        >>> raise CachedDecodingError("layer 'attention': no causal mask")
        Traceback (most recent call last):
        ...
        keras_llmopt._src.generation.cached_attention.CachedDecodingError: layer ...
    """


@dataclasses.dataclass(frozen=True)
class SlotSpec:
    """The cache of one attention call.

    Attributes:
        layer: Path of the attention layer in the model.
        key_shape: ``(heads, key_dim)`` of one cached key position.
        value_shape: ``(heads, value_dim)`` of one cached value position.

    Example:
        >>> SlotSpec("block_0_attention", (2, 32), (2, 32)).key_shape
        (2, 32)
    """

    layer: str
    key_shape: tuple
    value_shape: tuple


class StepContext:
    """What one decoding step gives the attention layers and collects from them.

    Args:
        input_pos: int32 ``[T]`` positions of the new tokens.
        caches: ``[(key, value)]`` per slot, each ``[B, cache_length, heads, dim]``;
            ``None`` to probe (plain causal attention over the new tokens, slots
            recorded in ``specs``).
        mask: Optional additive ``[1, 1, T, cache_length]`` mask (the LiteRT-LM
            input: 0 where attention is allowed, a large negative elsewhere); by
            default the mask comes from ``input_pos``.

    Example:
        >>> import numpy as np
        >>> context = StepContext(np.arange(3, dtype="int32"), caches=None)
        >>> context.probing, context.updated
        (True, [])
    """

    def __init__(self, input_pos, caches=None, mask=None):
        self.input_pos = ops.convert_to_tensor(input_pos, "int32")
        self.caches = None if caches is None else list(caches)
        self.mask = mask
        self.specs = []
        self.updated = []
        self._active = None

    @property
    def probing(self):
        """Whether this step only records the attention slots."""
        return self.caches is None

    @property
    def start(self):
        """The position of the first new token (an int32 scalar tensor)."""
        return self.input_pos[0]

    def allowed(self, batch, cache_length):
        """Boolean ``[B, T, cache_length]``: may new token ``t`` see cache slot ``s``."""
        if self.mask is not None:
            allowed = ops.greater(ops.convert_to_tensor(self.mask)[:, 0], -1.0)
        else:
            slots = ops.arange(cache_length, dtype="int32")
            allowed = ops.expand_dims(
                ops.less_equal(ops.expand_dims(slots, 0), ops.expand_dims(self.input_pos, 1)), 0
            )
        return ops.broadcast_to(allowed, (batch, allowed.shape[1], cache_length))


def self_attention_layers(model):
    """Every ``MultiHeadAttention`` in the model's layer tree, with its path.

    Example:
        >>> from keras_llmopt import reference
        >>> [path for path, _ in self_attention_layers(reference.build_gpt("tiny"))]
        ['block_0_attention', 'block_1_attention']
    """
    return [
        (node.path, node.layer)
        for node in walk_layers(model)
        if isinstance(node.layer, keras.layers.MultiHeadAttention)
    ]


@contextlib.contextmanager
def cached_attention(model, context):
    """Within the block, every ``MultiHeadAttention`` of ``model`` decodes from ``context``.

    Args:
        model: The model whose attention layers to hook.
        context: A :class:`StepContext` for the step run inside the block.

    Yields:
        ``context``; after the call, ``context.updated`` holds the new ``(key, value)``
        caches per slot (probing: ``context.specs`` the slots found).

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny")
        >>> context = StepContext(np.arange(4, dtype="int32"))
        >>> with cached_attention(model, context):
        ...     _ = model(np.zeros((1, 4), "int32"))
        >>> [spec.key_shape for spec in context.specs]
        [(2, 32), (2, 32)]
    """
    with contextlib.ExitStack() as stack:
        for path, layer in self_attention_layers(model):
            stack.enter_context(hooks.intercept(layer, "call", _call_hook(path, layer, context)))
            stack.enter_context(
                hooks.intercept(
                    layer,
                    keras_compat.COMPUTE_ATTENTION_ATTR,
                    _attention_hook(path, layer, context),
                )
            )
        yield context


def _refuse(path, layer, reason):
    raise CachedDecodingError(
        f"Cannot decode with a KV cache: layer {path!r} ({type(layer).__name__}) {reason}. "
        "Cached decoding takes causal self-attention: layer(x, x, use_causal_mask=True) "
        "with no other mask"
    )


def _call_hook(path, layer, context):
    def make(original):
        def call(query, value, key=None, *args, **kwargs):
            if not kwargs.get("use_causal_mask", False):
                _refuse(path, layer, "is called without use_causal_mask=True")
            if value is not query or (key is not None and key is not query):
                _refuse(path, layer, "attends to another sequence (cross-attention)")
            for name in ("query_mask", "value_mask", "key_mask", "attention_mask"):
                if kwargs.get(name) is not None:
                    _refuse(path, layer, f"is called with {name}=")
            if args or any(keras_compat.keras_mask(t) is not None for t in (query, value)):
                _refuse(path, layer, "receives a padding mask (mask_zero= or a mask argument)")
            if tuple(attention_internals.attention_axes(layer)) != (1,):
                _refuse(path, layer, "attends over axes other than the sequence axis")
            if getattr(layer, "_sliding_window", None) is not None:
                _refuse(path, layer, "has a sliding window")
            context._active = path
            try:
                return original(query, value, key, *args, **kwargs)
            finally:
                context._active = None

        return call

    return make


def _attention_hook(path, layer, context):
    def make(original):
        def compute_attention(query, key, value, attention_mask=None, training=None, *args, **kw):
            if context._active != path:
                return original(query, key, value, attention_mask, training, *args, **kw)
            slot = len(context.updated) + len(context.specs)
            if context.probing:
                context.specs.append(SlotSpec(path, tuple(key.shape[2:]), tuple(value.shape[2:])))
                return original(query, key, value, attention_mask, training, *args, **kw)
            if slot >= len(context.caches):
                raise CachedDecodingError(
                    f"Cached decoding: attention call {slot} (layer {path!r}) has no cache "
                    f"slot; the step was given {len(context.caches)}"
                )
            key_cache, value_cache = context.caches[slot]
            projections = attention_internals.projections(layer)
            key_cache = _write(key_cache, key, context.start)
            value_cache = _write(value_cache, value, context.start)
            # The caches returned are the written ones; attention reads them back through
            # the projections' output quantizers (QAT: int8 attention matmuls). The new
            # rows are already on those grids, so the returned caches lose nothing, and a
            # file does not dequantize whole caches again per step.
            context.updated.append((key_cache, value_cache))
            if "key" in projections:
                key_cache = layer_state.reapply_outputs(projections["key"], key_cache, training)
            if "value" in projections:
                value_cache = layer_state.reapply_outputs(
                    projections["value"], value_cache, training
                )
            batch = ops.shape(query)[0]
            mask = context.allowed(batch, key_cache.shape[1])
            kw.pop("use_causal_mask", None)
            return original(query, key_cache, value_cache, mask, training, *args, **kw)

        return compute_attention

    return make


def _write(cache, new, start):
    """``cache`` with ``new`` ([B, T, ...]) written at sequence position ``start``."""
    zero = ops.zeros((), "int32")
    begin = [zero, ops.cast(start, "int32")] + [zero] * (len(cache.shape) - 2)
    return ops.slice_update(cache, ops.stack(begin), ops.cast(new, cache.dtype))
