"""Which cached decoder runs a model: KerasHub's ``call_with_cache`` or the Keras-layer one.

Both kinds share one interface: ``slots`` (one ``SlotSpec`` per key/value cache),
``empty_caches(batch, cache_length)``, ``step(tokens, input_pos, caches, mask=None) ->
(logits, caches)``, ``max_length`` and ``vocab_size``. The generation loop, the
LiteRT generator export and its verification are written against that interface only.
"""

import weakref

from keras_llmopt._src.generation.cached_attention import CachedDecodingError
from keras_llmopt._src.generation.graph_decoder import GraphDecoder
from keras_llmopt._src.generation.keras_hub_decoder import (
    KerasHubDecoder,
    is_keras_hub_causal_lm,
)

_decoders = weakref.WeakKeyDictionary()


def decoder_for(model):
    """The cached decoder of ``model`` (made once per model, then reused).

    Args:
        model: A KerasHub CausalLM, or a Keras model built from Keras layers (the
            reference GPT, a functional GPT, a Sequential or subclassed model with causal
            ``MultiHeadAttention``), pruned, quantized or clustered or not.

    Returns:
        A ``KerasHubDecoder`` or a ``GraphDecoder``.

    Raises:
        CachedDecodingError: With the reason the model cannot be decoded with a cache.

    Example:
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny")
        >>> decoder_for(model).kind, decoder_for(model) is decoder_for(model)
        ('keras_layers', True)
    """
    if not callable(model) or not hasattr(model, "layers"):
        raise TypeError(f"`model` must be a Keras model. Received: {type(model).__name__}")
    try:
        return _decoders[model]
    except (KeyError, TypeError):
        pass
    if is_keras_hub_causal_lm(model):
        decoder = KerasHubDecoder(model)
    elif getattr(model, "backbone", None) is not None and hasattr(model, "preprocessor"):
        raise CachedDecodingError(
            f"Cannot decode {model.name!r} ({type(model).__name__}) with a KV cache: it is a "
            "KerasHub task without call_with_cache (not a CausalLM)"
        )
    else:
        decoder = GraphDecoder(model)
    try:
        _decoders[model] = decoder
    except TypeError:
        pass
    return decoder


__all__ = ["CachedDecodingError", "decoder_for"]
