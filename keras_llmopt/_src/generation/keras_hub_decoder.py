"""Cached decoding of KerasHub CausalLMs through their own ``call_with_cache``.

KerasHub keeps one cache tensor ``[B, num_layers, 2, max_length, kv_heads, head_dim]``
and updates it at ``cache_update_index``. A step here takes and returns the LiteRT-LM
layout instead, one key and one value cache ``[B, cache_length, kv_heads, head_dim]``
per layer, and stacks / splits between the two around the call. The model's own
rotary or learned positions, grouped-query heads, sliding windows and soft caps all
stay KerasHub's. Layer states (pruning masks, QAT quantizers) run inside that call
as in any other; the families whose attention is Keras's ``MultiHeadAttention``
(GPT-2, OPT: ``CachedMultiHeadAttention``) read their caches back through the key and
value projections' output quantizers, so a QAT file's attention matmuls stay int8.
"""

import contextlib
import inspect

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.core import hooks, layer_state
from keras_llmopt._src.core.keras_compat import attention_internals
from keras_llmopt._src.generation.cached_attention import CachedDecodingError, SlotSpec


def is_keras_hub_causal_lm(model):
    """Whether ``model`` decodes through a KerasHub-style ``call_with_cache``.

    Example:
        >>> from keras_llmopt import reference
        >>> is_keras_hub_causal_lm(reference.build_gpt("tiny"))
        False
    """
    return callable(getattr(model, "call_with_cache", None)) and callable(
        getattr(model, "_build_cache", None)
    )


class KerasHubDecoder:
    """Decodes a KerasHub CausalLM with its ``call_with_cache``.

    Args:
        model: A KerasHub ``CausalLM`` (Llama, Gemma, GPT-2, Qwen, Mistral, ...).

    Raises:
        CachedDecodingError: Its cache is not a key/value cache of the usual layout
            (recurrent or hybrid state, e.g. RWKV-7 or Qwen 3.5).

    Example:
        >>> import keras_hub
        >>> backbone = keras_hub.models.GPT2Backbone(
        ...     vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=8,
        ...     intermediate_dim=16, max_sequence_length=32)
        >>> decoder = KerasHubDecoder(keras_hub.models.GPT2CausalLM(backbone=backbone))
        >>> decoder.num_slots, decoder.slots[0].key_shape, decoder.max_length
        (1, (2, 4), 32)
    """

    kind = "keras_hub"

    def __init__(self, model):
        self.model = model
        backbone = getattr(model, "backbone", None)
        self.vocab_size = getattr(backbone, "vocabulary_size", None)
        self.max_length = getattr(backbone, "max_sequence_length", None)
        probe_length = 2
        try:
            built = model._build_cache(*_cache_arguments(model, probe_length))
        except Exception as error:  # the family's own code refused a bare token probe
            raise CachedDecodingError(
                f"Cannot decode {model.name!r} ({type(model).__name__}) with a KV cache: "
                f"its _build_cache(token_ids) failed: {error}"
            ) from error
        cache = built[-1] if isinstance(built, (tuple, list)) else built
        layers = getattr(backbone, "transformer_layers", None)
        if _is_pair_cache(cache, probe_length):  # Gemma 3: ((key, value), ...) per layer
            self._stacked = False
            shapes = [(tuple(k.shape[2:]), tuple(v.shape[2:])) for k, v in cache]
            self._dtype = keras.backend.standardize_dtype(cache[0][0].dtype)
        else:
            shape = tuple(getattr(cache, "shape", ()))
            if len(shape) != 6 or shape[2] != 2 or shape[3] != probe_length:
                raise CachedDecodingError(
                    f"Cannot decode {model.name!r} ({type(model).__name__}) with a KV cache: "
                    "its cache is not a [batch, layers, 2, length, heads, head_dim] key/value "
                    f"cache (got {_describe(cache)}); recurrent or hybrid state has no "
                    "LiteRT-LM layout"
                )
            self._stacked = True
            shapes = [(shape[4:], shape[4:])] * shape[1]
            self._dtype = keras.backend.standardize_dtype(cache.dtype)
        layers = layers or [None] * len(shapes)
        self.slots = tuple(
            SlotSpec(getattr(layer, "name", f"layer_{i}"), key, value)
            for i, (layer, (key, value)) in enumerate(zip(layers, shapes))
        )
        self._attention_layers = [
            layer
            for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.MultiHeadAttention)
        ]

    @property
    def num_slots(self):
        """How many layer caches a step reads and writes."""
        return len(self.slots)

    def empty_caches(self, batch_size, cache_length, dtype=None):
        """Zero ``[(key, value)]`` caches, each ``[batch, cache_length, heads, dim]``."""
        dtype = dtype or self._dtype
        return [
            (
                np.zeros((batch_size, cache_length) + slot.key_shape, dtype),
                np.zeros((batch_size, cache_length) + slot.value_shape, dtype),
            )
            for slot in self.slots
        ]

    def step(self, tokens, input_pos, caches, mask=None):
        """Runs the new ``tokens`` at ``input_pos`` (``mask`` is KerasHub's own, unused).

        Returns:
            ``(logits [B, T, V], new caches)``.
        """
        del mask  # KerasHub builds its causal mask from cache_update_index
        pairs = [(ops.convert_to_tensor(k), ops.convert_to_tensor(v)) for k, v in caches]
        start = ops.convert_to_tensor(input_pos, "int32")[0]
        tokens = ops.convert_to_tensor(tokens, "int32")
        with self._caches_read_as_projected():
            if not self._stacked:
                logits, _, updated = self.model.call_with_cache(tokens, tuple(pairs), start)
                return logits, [tuple(pair) for pair in updated]
            stacked = ops.stack([ops.stack(pair, 1) for pair in pairs], axis=1)
            logits, _, stacked = self.model.call_with_cache(tokens, stacked, start)
        return logits, [(stacked[:, i, 0], stacked[:, i, 1]) for i in range(len(caches))]

    @contextlib.contextmanager
    def _caches_read_as_projected(self):
        """Keras ``MultiHeadAttention`` layers see their caches as projection outputs."""
        with contextlib.ExitStack() as stack:
            for layer in self._attention_layers:
                stack.enter_context(
                    hooks.intercept(layer, "_compute_attention", _requantized(layer))
                )
            yield


def _requantized(layer):
    projections = attention_internals.projections(layer)

    def make(original):
        def compute_attention(query, key, value, *args, **kwargs):
            if "key" in projections:
                key = layer_state.reapply_outputs(projections["key"], key)
            if "value" in projections:
                value = layer_state.reapply_outputs(projections["value"], value)
            return original(query, key, value, *args, **kwargs)

        return compute_attention

    return make


def _cache_arguments(model, length):
    """Positional arguments of ``_build_cache`` for a text-only probe of ``length`` tokens.

    Multimodal families (Gemma 3) take image arguments (``None``: no image) and some a
    ``padding_mask`` (all ones).
    """
    tokens = np.zeros((1, length), "int32")
    arguments = [tokens]
    parameters = list(inspect.signature(model._build_cache).parameters.values())[1:]
    for parameter in parameters:
        if parameter.default is not inspect.Parameter.empty:
            break
        arguments.append(np.ones((1, length), "int32") if "mask" in parameter.name else None)
    return arguments


def _is_pair_cache(cache, length):
    if not isinstance(cache, (tuple, list)) or not cache:
        return False
    return all(
        isinstance(pair, (tuple, list))
        and len(pair) == 2
        and all(len(getattr(t, "shape", ())) == 4 and t.shape[1] == length for t in pair)
        for pair in cache
    )


def _describe(cache):
    if isinstance(cache, (tuple, list)):
        return f"a {type(cache).__name__} of {len(cache)}"
    if isinstance(cache, dict):
        return f"a dict with keys {sorted(cache)}"
    return f"shape {tuple(getattr(cache, 'shape', ()))}"
