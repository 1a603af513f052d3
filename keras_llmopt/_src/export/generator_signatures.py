"""The LiteRT-LM signatures of a generator file, and realistic inputs to check them on.

Names and layouts follow the LiteRT-LM / litert-torch convention (see DESIGN.md,
"Generation files"): signatures ``prefill`` (``prefill_<L>`` when there are several
prompt-length buckets) and ``decode``; inputs ``tokens`` int32 ``[1, T]``,
``input_pos`` int32 ``[T]``, an additive ``mask`` ``[1, 1, T, cache_length]`` and
per attention ``kv_cache_k_<i>`` / ``kv_cache_v_<i>`` ``[1, cache_length, heads, dim]``;
outputs the updated caches under the same names, and ``logits`` ``[1, 1, V]`` from
``decode``. Both signatures call the same decoder step, so their weights are the same
variables and the file stores them once.
"""

import numpy as np
from keras import ops

from keras_llmopt._src.export.signature_def import Signature

TOKENS = "tokens"
INPUT_POS = "input_pos"
MASK = "mask"
LOGITS = "logits"
DECODE = "decode"
MASKED = -1e9  # what the mask holds where attention is not allowed (0 elsewhere)


def cache_names(index):
    """``(key name, value name)`` of attention slot ``index``.

    Example:
        >>> cache_names(3)
        ('kv_cache_k_3', 'kv_cache_v_3')
    """
    return f"kv_cache_k_{index}", f"kv_cache_v_{index}"


def prefill_name(length, lengths):
    """The signature key of the prefill for ``length`` tokens.

    Example:
        >>> prefill_name(16, (16,)), prefill_name(4, (16, 4, 1))
        ('prefill', 'prefill_4')
    """
    return "prefill" if len(lengths) == 1 else f"prefill_{length}"


def causal_mask(input_pos, cache_length):
    """The additive mask ``[1, 1, T, cache_length]``: 0 for slots ``<= input_pos[t]``.

    Example:
        >>> causal_mask(np.array([1, 2]), 4)[0, 0]
        array([[ 0.e+00,  0.e+00, -1.e+09, -1.e+09],
               [ 0.e+00,  0.e+00,  0.e+00, -1.e+09]], dtype=float32)
    """
    allowed = np.arange(cache_length)[None, :] <= np.asarray(input_pos)[:, None]
    return np.where(allowed, 0.0, MASKED).astype("float32")[None, None]


def _flat_caches(caches):
    flat = {}
    for index, (key, value) in enumerate(caches):
        key_name, value_name = cache_names(index)
        flat[key_name], flat[value_name] = key, value
    return flat


def _pairs(decoder, named):
    return [(named[cache_names(i)[0]], named[cache_names(i)[1]]) for i in range(decoder.num_slots)]


def build_signatures(decoder, cache_length, prefill_lengths, samples):
    """One ``Signature`` per prefill length and one ``decode``, over ``decoder``.

    Args:
        decoder: A cached decoder (``generation.decoders.decoder_for``).
        cache_length: Positions of every cache.
        prefill_lengths: Token counts of the prefill signatures.
        samples: ``{signature name: [input dict]}`` to verify each on.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.generation.decoders import decoder_for
        >>> decoder = decoder_for(reference.build_gpt("tiny"))
        >>> [s.name for s in build_signatures(decoder, 16, (4, 1), {})]
        ['prefill_4', 'prefill_1', 'decode']
    """
    dtype = "float32"
    cache_inputs = []
    for index, slot in enumerate(decoder.slots):
        key_name, value_name = cache_names(index)
        cache_inputs.append((key_name, (1, cache_length) + tuple(slot.key_shape), dtype))
        cache_inputs.append((value_name, (1, cache_length) + tuple(slot.value_shape), dtype))
    cache_outputs = [spec[0] for spec in cache_inputs]
    # Caches are compared by value (float modes) but have no "classes" to agree on.
    cache_tolerance = {name: {"top1": 0.0} for name in cache_outputs}

    def make(name, length, with_logits):
        inputs = [
            (TOKENS, (1, length), "int32"),
            (INPUT_POS, (length,), "int32"),
            (MASK, (1, 1, length, cache_length), "float32"),
            *cache_inputs,
        ]
        outputs = ([LOGITS] if with_logits else []) + cache_outputs

        def function(**named):
            logits, caches = decoder.step(
                named[TOKENS], named[INPUT_POS], _pairs(decoder, named), mask=named[MASK]
            )
            result = _flat_caches(caches)
            if with_logits:
                result[LOGITS] = logits
            return result

        def reference(**named):
            result = function(**named)
            return {key: ops.convert_to_numpy(value) for key, value in result.items()}

        return Signature(
            name,
            function,
            inputs,
            outputs,
            reference,
            verification_inputs=samples.get(name),
            tolerance=cache_tolerance,
        )

    signatures = [
        make(prefill_name(length, prefill_lengths), length, False) for length in prefill_lengths
    ]
    signatures.append(make(DECODE, 1, True))
    return signatures


def step_inputs(decoder, tokens, start, caches, cache_length):
    """The named inputs of a step feeding ``tokens`` ``[1, T]`` from position ``start``.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.generation.decoders import decoder_for
        >>> decoder = decoder_for(reference.build_gpt("tiny"))
        >>> named = step_inputs(decoder, np.zeros((1, 2), "int32"), 3,
        ...                     decoder.empty_caches(1, 8), 8)
        >>> named["input_pos"].tolist(), named["mask"].shape
        ([3, 4], (1, 1, 2, 8))
    """
    positions = np.arange(start, start + tokens.shape[1], dtype="int32")
    named = {
        TOKENS: np.asarray(tokens, "int32"),
        INPUT_POS: positions,
        MASK: causal_mask(positions, cache_length),
    }
    named.update(_flat_caches(caches))
    return named


def signature_samples(decoder, rows, cache_length, prefill_lengths, per_row=8):
    """Inputs for every signature taken from real prefixes of token ``rows``.

    For each row, each prefill runs at position 0 on empty caches and at a later
    position on caches the Keras decoder filled from the row's prefix; ``decode`` runs
    at ``per_row`` positions spread over the cache (the last slot included).

    Args:
        decoder: The cached decoder.
        rows: int token ids ``[N, >= cache_length]``.
        cache_length: The caches' positions.
        prefill_lengths: The prefill signatures' token counts.
        per_row: Decode positions per row.

    Returns:
        ``{signature name: [input dict, ...]}``.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.generation.decoders import decoder_for
        >>> decoder = decoder_for(reference.build_gpt("tiny"))
        >>> rows = np.random.default_rng(0).integers(0, 256, (1, 8))
        >>> samples = signature_samples(decoder, rows, 8, (4,), per_row=2)
        >>> {name: len(found) for name, found in samples.items()}
        {'prefill': 2, 'decode': 2}
    """
    samples = {prefill_name(length, prefill_lengths): [] for length in prefill_lengths}
    samples[DECODE] = []
    positions = np.unique(np.linspace(1, cache_length - 1, per_row).astype(int))
    starts = {length: min(cache_length - length, cache_length // 2) for length in prefill_lengths}
    needed = {int(p) for p in positions} | set(starts.values())
    for row in np.asarray(rows, "int32"):
        row = row[None, :cache_length]
        filled = _filled_caches(decoder, row, cache_length, needed)
        for length in prefill_lengths:
            name = prefill_name(length, prefill_lengths)
            empty = decoder.empty_caches(1, cache_length)
            samples[name].append(step_inputs(decoder, row[:, :length], 0, empty, cache_length))
            start = starts[length]
            if start > 0:
                caches = filled[start]
                tokens = row[:, start : start + length]
                samples[name].append(step_inputs(decoder, tokens, start, caches, cache_length))
        for position in positions:
            tokens = row[:, position : position + 1]
            caches = filled[int(position)]
            samples[DECODE].append(
                step_inputs(decoder, tokens, int(position), caches, cache_length)
            )
    return samples


def _filled_caches(decoder, row, cache_length, needed):
    """``{p: caches holding positions 0..p-1 of row}`` for every ``p`` in ``needed``."""
    caches = decoder.empty_caches(1, cache_length)
    filled = {0: caches}
    for position in range(max(needed, default=0)):
        named = step_inputs(
            decoder, row[:, position : position + 1], position, caches, cache_length
        )
        _, updated = decoder.step(
            named[TOKENS], named[INPUT_POS], _pairs(decoder, named), mask=named[MASK]
        )
        caches = [(ops.convert_to_numpy(k), ops.convert_to_numpy(v)) for k, v in updated]
        if position + 1 in needed:
            filled[position + 1] = caches
    return filled
