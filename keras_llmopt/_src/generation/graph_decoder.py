"""Cached decoding of models built from Keras layers (functional, Sequential, subclassed).

A step runs the model on the new tokens only, with three things changed for the call:

* every causal ``MultiHeadAttention`` reads and writes its KV cache
  (:mod:`cached_attention`);
* in a functional graph, positions computed as ``cumsum(ones_like(tokens), axis=1)``
  (the reference GPT's ``- 1`` after it included) start at ``input_pos`` instead of 0;
* layers whose ``call`` takes ``start_index`` (KerasHub's ``PositionEmbedding``,
  ``RotaryEmbedding``, ``TokenAndPositionEmbedding``) are called with the step's start.

Everything else (embeddings, norms, MLPs, heads) acts on each position alone, so running
it on the new tokens is exact. Before a model is accepted, one probe checks that: a
prompt prefilled and then decoded a token at a time must reproduce the logits of the
model's own full forward pass; a model with some other position-mixing computation
(a convolution, custom position code) fails that probe and is refused with the figure.
"""

import contextlib
import inspect

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.core import hooks, keras_compat
from keras_llmopt._src.core.layer_tree import walk_layers
from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.generation.cached_attention import (
    CachedDecodingError,
    StepContext,
    cached_attention,
)

# Layers that mix positions and have no cache rule.
_POSITION_MIXERS = (
    keras.layers.Conv1D,
    keras.layers.RNN,
    keras.layers.LSTM,
    keras.layers.GRU,
    keras.layers.SimpleRNN,
    keras.layers.Bidirectional,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.AveragePooling1D,
    keras.layers.MaxPooling1D,
    keras.layers.Flatten,
    keras.layers.Attention,
    keras.layers.AdditiveAttention,
)
_PROBE_LENGTH = 6
_PROBE_PREFILL = 3


class GraphDecoder:
    """Decodes a model built from Keras layers with per-attention KV caches.

    Args:
        model: A functional, Sequential or subclassed Keras model taking int32 token
            ids ``[B, T]`` and returning logits ``[B, T, V]``.

    Raises:
        CachedDecodingError: The model mixes positions in a way the cache does not
            reproduce (the message names the layer or the probe's figure).

    Example:
        >>> from keras_llmopt import reference
        >>> decoder = GraphDecoder(reference.build_gpt("tiny"))
        >>> decoder.num_slots, decoder.max_length
        (2, 64)
    """

    kind = "keras_layers"

    def __init__(self, model):
        self.model = model
        described = describe_inputs(model)
        if len(described.specs) != 1 or described.token_input is None:
            raise CachedDecodingError(
                f"Cannot decode {model.name!r} with a KV cache: it takes inputs "
                f"{list(described.names)}; cached decoding of a model built from Keras "
                "layers takes one int32 token-id input"
            )
        self.max_length = described.max_sequence_length
        self.vocab_size = described.vocabulary_size
        self._graph = keras_compat.graph_of(model)
        self._context = None
        self._refuse_position_mixers()
        self._position_ops = self._find_position_ops()
        self._start_layers = [
            node.layer for node in walk_layers(model) if _takes_start_index(node.layer)
        ]
        context = StepContext(np.arange(_PROBE_LENGTH, dtype="int32"))
        probe = np.zeros((1, _PROBE_LENGTH), "int32")
        logits = self._run(probe, context)
        self.slots = tuple(context.specs)
        # The logits' width, not the largest Embedding (a position table can be larger).
        self.vocab_size = int(logits.shape[-1])
        self._check_against_full_forward()

    @property
    def num_slots(self):
        """How many attention caches a step reads and writes."""
        return len(self.slots)

    def empty_caches(self, batch_size, cache_length, dtype="float32"):
        """Zero ``[(key, value)]`` caches, each ``[batch, cache_length, heads, dim]``.

        Example:
            >>> from keras_llmopt import reference
            >>> caches = GraphDecoder(reference.build_gpt("tiny")).empty_caches(1, 16)
            >>> caches[0][0].shape
            (1, 16, 2, 32)
        """
        return [
            (
                np.zeros((batch_size, cache_length) + slot.key_shape, dtype),
                np.zeros((batch_size, cache_length) + slot.value_shape, dtype),
            )
            for slot in self.slots
        ]

    def step(self, tokens, input_pos, caches, mask=None):
        """Runs the new ``tokens`` at ``input_pos`` against ``caches``.

        Args:
            tokens: int32 ``[B, T]``.
            input_pos: int32 ``[T]``, consecutive positions.
            caches: ``[(key, value)]`` per slot (see :meth:`empty_caches`).
            mask: Optional additive ``[1, 1, T, cache_length]`` attention mask.

        Returns:
            ``(logits [B, T, V], new caches)``.

        Example:
            >>> from keras_llmopt import reference
            >>> decoder = GraphDecoder(reference.build_gpt("tiny"))
            >>> logits, caches = decoder.step(np.zeros((1, 2), "int32"),
            ...                               np.array([0, 1], "int32"),
            ...                               decoder.empty_caches(1, 8))
            >>> tuple(logits.shape), tuple(caches[1][1].shape)
            ((1, 2, 256), (1, 8, 2, 32))
        """
        context = StepContext(input_pos, caches, mask)
        logits = self._run(tokens, context)
        return logits, context.updated

    def _run(self, tokens, context):
        self._context = context
        try:
            with cached_attention(self.model, context), self._start_index(context):
                if self._graph is None:
                    return self.model(tokens, training=False)
                return keras_compat.run_graph(
                    self._graph, tokens, lambda op: self._position_ops.get(id(op), op)
                )
        finally:
            self._context = None

    def _start_index(self, context):
        stack = contextlib.ExitStack()
        for layer in self._start_layers:

            def make(original):
                def call(*args, **kwargs):
                    kwargs["start_index"] = kwargs.get("start_index", 0) + context.start
                    return original(*args, **kwargs)

                return call

            stack.enter_context(hooks.intercept(layer, "call", make))
        return stack

    def _refuse_position_mixers(self):
        for node in walk_layers(self.model):
            if isinstance(node.layer, _POSITION_MIXERS):
                raise CachedDecodingError(
                    f"Cannot decode {self.model.name!r} with a KV cache: layer "
                    f"{node.path!r} ({type(node.layer).__name__}) mixes positions and has no "
                    "cache rule (cached decoding covers causal MultiHeadAttention and "
                    "position embeddings)"
                )

    def _find_position_ops(self):
        """``{id(op): replacement}`` for the graph's ``cumsum(ones_like(x), axis=1)``."""
        if self._graph is None:
            return {}
        replacements = {}
        for operation, inputs in keras_compat.graph_operations(self._graph):
            if keras_compat.operation_name(operation) != "Cumsum":
                continue
            source = inputs[0] if inputs else None
            axis = getattr(operation, "axis", None)
            rank = len(source.shape) if source is not None else 0
            ones = keras_compat.operation_name(keras_compat.producer_of(source)) == "OnesLike"
            if rank != 2 or axis not in (1, -1) or not ones:
                raise CachedDecodingError(
                    f"Cannot decode {self.model.name!r} with a KV cache: its graph takes a "
                    f"cumulative sum ({operation.name!r}, axis={axis}) that is not the "
                    "position count cumsum(ones_like(tokens), axis=1); a cache cannot "
                    "carry it"
                )
            replacements[id(operation)] = _PositionCount(self)
        return replacements

    def _check_against_full_forward(self):
        length = min(_PROBE_LENGTH, self.max_length or _PROBE_LENGTH)
        vocab = self.vocab_size or 2
        tokens = np.random.default_rng(0).integers(0, vocab, (1, length)).astype("int32")
        full = keras.ops.convert_to_numpy(self.model(tokens, training=False))
        caches = self.empty_caches(1, length)
        split = min(_PROBE_PREFILL, length - 1)
        logits, caches = self.step(tokens[:, :split], np.arange(split, dtype="int32"), caches)
        pieces = [keras.ops.convert_to_numpy(logits)]
        for position in range(split, length):
            logits, caches = self.step(
                tokens[:, position : position + 1], np.array([position], "int32"), caches
            )
            pieces.append(keras.ops.convert_to_numpy(logits))
        cached = np.concatenate(pieces, axis=1)
        error = float(np.max(np.abs(cached - full)))
        scale = float(np.max(np.abs(full))) or 1.0
        if not error <= 1e-4 + 1e-3 * scale:
            raise CachedDecodingError(
                f"Cannot decode {self.model.name!r} with a KV cache: decoding a "
                f"{length}-token probe with the cache gives logits {error:.3g} away from the "
                f"model's full forward pass (max |logit| {scale:.3g}). Some layer mixes "
                "positions in a way the cache does not see (custom position code, a "
                "convolution, non-causal attention)"
            )


class _PositionCount:
    """Stands in for ``cumsum(ones_like(tokens), axis=1)``: ``input_pos + 1`` per row."""

    def __init__(self, decoder):
        self.decoder = decoder

    def __call__(self, ones, *args, **kwargs):
        context = _current_context(self.decoder)
        count = ops.expand_dims(context.input_pos + 1, 0)
        return ops.broadcast_to(ops.cast(count, ones.dtype), ops.shape(ones))


def _current_context(decoder):
    context = getattr(decoder, "_context", None)
    if context is None:
        raise CachedDecodingError("internal: a position count ran outside a decoding step")
    return context


def _takes_start_index(layer):
    try:
        return "start_index" in inspect.signature(type(layer).call).parameters
    except (TypeError, ValueError):
        return False
