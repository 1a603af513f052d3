"""``generate`` and ``stream``: token-by-token decoding of a Keras model with a KV cache.

The prompt's first ``T - 1`` tokens are prefilled in one step (their keys and values
go into the cache); then each step feeds one token, the last prompt token first, and
the shared :class:`Sampler` picks the next one from that step's logits. A LiteRT
generator file runs the same schedule (``export.load_generator``), so greedy tokens
and seeded samples agree between the two.

On TensorFlow each step runs as a ``tf.function`` (one trace for the prefill length,
one for single tokens), with XLA if ``jit_compile=True``; on other backends eagerly.
"""

import numpy as np
from keras import backend, ops

from keras_llmopt._src.generation.decoders import decoder_for
from keras_llmopt._src.generation.sampling import Sampler, sampling_config


def check_prompt(prompt_ids, vocab_size=None):
    """Prompt token ids as an int32 ``[B, T]`` array (a 1-D prompt is one row).

    Raises:
        ValueError: Not 1-D or 2-D, empty, or ids outside ``[0, vocab_size)``.

    Example:
        >>> check_prompt([5, 6, 7]).shape
        (1, 3)
        >>> check_prompt([[1, 300]], vocab_size=256)
        Traceback (most recent call last):
        ...
        ValueError: `prompt_ids` must be token ids in [0, 256). Received: ids from 1 to 300
    """
    prompt = np.asarray(prompt_ids)
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[1] < 1 or prompt.shape[0] < 1:
        raise ValueError(
            "`prompt_ids` must be token ids of shape [T] or [batch, T] with T >= 1. "
            f"Received: shape {prompt.shape}"
        )
    if not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"`prompt_ids` must be integers. Received: dtype {prompt.dtype}")
    low, high = int(prompt.min()), int(prompt.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bound = f"[0, {vocab_size})" if vocab_size is not None else "[0, vocab_size)"
        raise ValueError(
            f"`prompt_ids` must be token ids in {bound}. Received: ids from {low} to {high}"
        )
    return prompt.astype("int32")


def check_length(prompt_length, max_new_tokens, cache_length, limit_name):
    """Checks ``max_new_tokens`` and that prompt + new tokens fit ``cache_length``.

    Example:
        >>> check_length(4, 8, 16, "the cache length")
        >>> check_length(4, 20, 16, "the cache length")
        Traceback (most recent call last):
        ...
        ValueError: The prompt (4 tokens) + max_new_tokens=20 = 24 positions exceed ...
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"`max_new_tokens` must be an int >= 0. Received: {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"`max_new_tokens` must be an int >= 0. Received: {max_new_tokens}")
    if cache_length is not None and prompt_length + max_new_tokens > cache_length:
        raise ValueError(
            f"The prompt ({prompt_length} tokens) + max_new_tokens={max_new_tokens} = "
            f"{prompt_length + max_new_tokens} positions exceed {limit_name} "
            f"({cache_length}). Shorten the prompt or ask for fewer tokens"
        )


class StopTracker:
    """Which rows have produced a stop token; finished rows repeat it.

    Example:
        >>> tracker = StopTracker(2, (9,))
        >>> tracker.update(np.array([9, 3])).tolist(), tracker.update(np.array([4, 9])).tolist()
        ([9, 3], [9, 9])
        >>> tracker.finished
        True
    """

    def __init__(self, batch_size, stop_token_ids):
        self.stops = np.asarray(stop_token_ids, "int32")
        self.done = np.zeros(batch_size, bool)
        self.last = np.zeros(batch_size, "int32")

    def update(self, tokens):
        tokens = np.where(self.done, self.last, tokens).astype("int32")
        if self.stops.size:
            self.done |= np.isin(tokens, self.stops)
        self.last = tokens
        return tokens

    @property
    def finished(self):
        """Every row has stopped."""
        return bool(self.stops.size and self.done.all())


def stream(
    model,
    prompt_ids,
    max_new_tokens,
    *,
    sampler="greedy",
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    stop_token_ids=None,
    jit_compile=False,
):
    """Yields each new token as it is chosen: an int32 array ``[B]`` per step.

    Arguments as for :func:`generate`. A row that produced a stop token repeats it;
    the stream ends after ``max_new_tokens`` steps or when every row has stopped.

    Example:
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny", seed=0)
        >>> [int(t[0]) for t in stream(model, [[72, 105]], 3)] == generate(
        ...     model, [[72, 105]], 3)[0, 2:].tolist()
        True
    """
    config = sampling_config(sampler, temperature, top_k, top_p, seed, stop_token_ids)
    decoder = decoder_for(model)
    prompt = check_prompt(prompt_ids, decoder.vocab_size)
    batch, length = prompt.shape
    check_length(length, max_new_tokens, decoder.max_length, "the model's longest sequence")
    return _stream(decoder, prompt, max_new_tokens, config, jit_compile)


def _stream(decoder, prompt, max_new_tokens, config, jit_compile):
    batch, length = prompt.shape
    step = compiled_step(decoder, jit_compile)
    choose = Sampler(config)
    tracker = StopTracker(batch, config.stop_token_ids)
    caches = decoder.empty_caches(batch, length + max_new_tokens)
    if length > 1:
        _, caches = step(prompt[:, :-1], np.arange(length - 1, dtype="int32"), caches)
    token = prompt[:, -1:]
    for position in range(length - 1, length - 1 + max_new_tokens):
        logits, caches = step(token, np.array([position], "int32"), caches)
        chosen = tracker.update(choose(ops.convert_to_numpy(logits)[:, -1]))
        yield chosen
        if tracker.finished:
            return
        token = chosen[:, None]


def generate(
    model,
    prompt_ids,
    max_new_tokens,
    *,
    sampler="greedy",
    temperature=1.0,
    top_k=None,
    top_p=None,
    seed=None,
    stop_token_ids=None,
    jit_compile=False,
):
    """Generates ``max_new_tokens`` after the prompt, decoding with a KV cache.

    Args:
        model: The reference GPT, a functional / Sequential / subclassed model with
            causal ``keras.layers.MultiHeadAttention``, or a KerasHub CausalLM; pruned,
            QAT, clustered or one-shot compressed versions too.
        prompt_ids: int token ids ``[T]`` or ``[B, T]`` (rows of one length).
        max_new_tokens: How many tokens to add (prompt + new must fit the model's
            longest sequence).
        sampler: ``"greedy"``, ``"top_k"``, ``"top_p"`` or ``"temperature"``.
        temperature: Logits are divided by it before a draw.
        top_k: Draw among the ``top_k`` most likely tokens.
        top_p: Draw among the most likely tokens whose probability reaches ``top_p``.
        seed: Seed of the draws (same seed, same tokens).
        stop_token_ids: Tokens that end a row (it then repeats that token); generation
            ends early when every row has stopped.
        jit_compile: TensorFlow: compile each step with XLA.

    Returns:
        int32 ``[B, T + n]``: the prompt followed by the ``n <= max_new_tokens`` new
        tokens.

    Raises:
        CachedDecodingError: The model cannot be decoded with a cache (the reason).
        ValueError / TypeError: Bad prompt, length or sampling arguments (named).

    Example:
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny", seed=0)
        >>> generate(model, [[72, 105]], max_new_tokens=4).shape
        (1, 6)
        >>> a = generate(model, [[72]], 5, sampler="top_k", top_k=3, seed=1)
        >>> bool((a == generate(model, [[72]], 5, sampler="top_k", top_k=3, seed=1)).all())
        True
    """
    tokens = stream(
        model,
        prompt_ids,
        max_new_tokens,
        sampler=sampler,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_token_ids=stop_token_ids,
        jit_compile=jit_compile,
    )
    prompt = check_prompt(prompt_ids)
    new = list(tokens)
    if not new:
        return prompt
    return np.concatenate([prompt, np.stack(new, axis=1)], axis=1).astype("int32")


def compiled_step(decoder, jit_compile=False):
    """``decoder.step`` compiled for the backend (TensorFlow: a ``tf.function``).

    Example:
        >>> from keras_llmopt import reference
        >>> decoder = decoder_for(reference.build_gpt("tiny"))
        >>> step = compiled_step(decoder)
        >>> logits, _ = step(np.zeros((1, 1), "int32"), np.array([0], "int32"),
        ...                  decoder.empty_caches(1, 4))
        >>> tuple(logits.shape)
        (1, 1, 256)
    """
    key = ("_compiled_steps", bool(jit_compile))
    cache = decoder.__dict__.setdefault("_compiled", {})
    if key in cache:
        return cache[key]
    if backend.backend() == "tensorflow":
        import tensorflow as tf

        function = tf.function(
            lambda tokens, input_pos, caches: decoder.step(tokens, input_pos, caches),
            jit_compile=bool(jit_compile),
        )
    else:
        function = decoder.step
    cache[key] = function
    return function
