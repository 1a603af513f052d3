"""Token-by-token generation with a KV cache, and the samplers shared with LiteRT files.

``generate`` / ``stream`` decode any model built from Keras layers with causal
``MultiHeadAttention`` (the reference GPT, functional, Sequential or subclassed GPTs)
and KerasHub CausalLMs (through their ``call_with_cache``), pruned, quantized or
clustered as well. The prompt is prefilled once; every new token costs one position.
``export.to_tflite_generator`` writes the same decoder to a LiteRT file, and
``export.load_generator`` generates from it with the same samplers.

Example:
    >>> from keras_llmopt import generation, reference
    >>> model = reference.build_gpt("tiny", seed=0)
    >>> generation.generate(model, [[72, 105]], max_new_tokens=3).shape
    (1, 5)
    >>> next(generation.stream(model, [[72, 105]], 3)).shape
    (1,)
"""

from keras_llmopt._src.generation.cached_attention import CachedDecodingError
from keras_llmopt._src.generation.decoders import decoder_for
from keras_llmopt._src.generation.generate import generate, stream
from keras_llmopt._src.generation.sampling import (
    SAMPLERS,
    Sampler,
    SamplingConfig,
    sampling_config,
)

__all__ = [
    "SAMPLERS",
    "CachedDecodingError",
    "Sampler",
    "SamplingConfig",
    "decoder_for",
    "generate",
    "sampling_config",
    "stream",
]
