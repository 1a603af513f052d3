"""``to_tflite_generator``: a verified LiteRT-LM style ``.tflite`` with prefill and decode.

The model's cached decoder (``generation.decoders``) is traced once per signature
(:mod:`generator_signatures`), the signatures are converted together in the chosen
mode, and the staged file is checked twice before it is moved into place: every
signature's outputs against the Keras decoder on caches filled from a real prefix,
then greedy generation from the file against ``generation.generate`` on the same
prompt, up to the full cache.
"""

import numpy as np
from absl import logging
from keras import ops

from keras_llmopt._src.export import (
    common,
    converter,
    files,
    generator_signatures,
    signature,
    tflite,
    tflite_modes,
)
from keras_llmopt._src.export.generator_runner import GeneratorRunner
from keras_llmopt._src.export.signature_verification import verify_signatures
from keras_llmopt._src.export.verification import DEFAULT_TOLERANCES, resolve_tolerance
from keras_llmopt._src.generation.decoders import decoder_for
from keras_llmopt._src.generation.generate import generate

GENERATOR_MODES = (None, "float16", "dynamic_int8", "int8", "int4")
# No 1-token bucket by default: ``decode`` writes one position as well (it also returns
# logits), and each signature adds its op tables to the file.
DEFAULT_PREFILL_LENGTHS = (16, 4)
_VERIFY_ROWS = 2
_GREEDY_PROMPT = 4


def to_tflite_generator(
    model,
    path,
    *,
    cache_length,
    prefill_lengths=None,
    quantization=None,
    representative_dataset=None,
    verify=True,
    tolerance=None,
    num_threads=None,
    verification_data=None,
    block_size=None,
    allow_float_ops=False,
    integer_only=False,
    compact_file=True,
):
    """Writes a generator ``.tflite``: ``prefill`` / ``prefill_<L>`` and ``decode``.

    Inputs of every signature: ``tokens`` int32 ``[1, T]``, ``input_pos`` int32
    ``[T]``, ``mask`` float32 ``[1, 1, T, cache_length]`` (additive: 0 where allowed)
    and per attention ``kv_cache_k_<i>`` / ``kv_cache_v_<i>`` float32 ``[1,
    cache_length, kv_heads, head_dim]``; outputs the caches with the new keys and
    values written at ``input_pos`` (DYNAMIC_UPDATE_SLICE), and ``decode`` also
    ``logits`` ``[1, 1, vocab]``. This is the LiteRT-LM layout, so the file runs in our
    runner (``load_generator``) and in Google's LiteRT-LM engine (``to_litertlm``).

    Verification (before the file is moved to ``path``): each signature's logits and
    caches against the Keras model on caches filled from a real prefix (the mode's
    tolerance); then greedy tokens of the file against ``generation.generate`` for a
    verification prompt up to the full cache: identical in float32, at least the
    mode's ``top1`` agreement otherwise. A failure raises ``VerificationError`` and
    leaves nothing at ``path``.

    Args:
        model: Any model ``generation.generate`` decodes (the reference GPT, a
            functional GPT, a KerasHub CausalLM; pruned, QAT, clustered too).
        path: Output ``.tflite`` path.
        cache_length: Positions of the caches: prompt + generated tokens must fit.
        prefill_lengths: Token counts of the prefill signatures (default ``(16, 4)``,
            those below ``cache_length``; a shorter remainder is padded, or fed
            through ``decode`` where padding would overrun the cache).
        quantization: ``None`` (float32), ``"float16"``, ``"dynamic_int8"``, ``"int8"``
            (a QAT model: its learned ranges; a float model: calibrated on
            ``representative_dataset``) or ``"int4"`` (weights).
        representative_dataset: ``"int8"`` from a float model: token ids ``[N, T >=
            cache_length]``; each row's prefixes give the samples of every signature.
        verify: Run both checks.
        tolerance: Dict overriding the mode's tolerance keys (``atol``, ``rtol``,
            ``top1``).
        num_threads: LiteRT threads used to verify.
        verification_data: Token ids ``[N, >= cache_length]`` to verify on (default:
            seeded random ids).
        block_size: ``"int4"`` only: input rows per weight scale (a GPTQ / AWQ
            model: its groups; in ``"int4"`` / ``"dynamic_int8"`` the file stores the
            grids they chose, in every signature, as ``to_tflite`` does).
        allow_float_ops: ``"int8"``: accept float matmuls (listed in the summary).
        integer_only: ``"int8"``: keep SOFTMAX / GELU integer too.
        compact_file: Rewrite the flatbuffer losslessly smaller.

    Returns:
        An ``ExportReport``; ``summary["generator"]`` has the cache length, prefill
        lengths, slot shapes and the greedy agreement measured.

    Raises:
        CachedDecodingError: The model cannot be decoded with a cache (why).
        ValueError / TypeError: Bad arguments (named), or a ``VerificationError``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny", seed=0)
        >>> r = export.to_tflite_generator(model, "gen.tflite", cache_length=16,
        ...                                prefill_lengths=(4, 1))
        >>> sorted(r.summary["signatures"])
        ['decode', 'prefill_1', 'prefill_4']
        >>> r.summary["generator"]["greedy_agreement"]
        1.0
    """
    signature.require_tensorflow("to_tflite_generator")
    path = files.check_path(path)
    if quantization not in GENERATOR_MODES:
        raise ValueError(
            f"`quantization` must be one of {GENERATOR_MODES} for a generator file. "
            f"Received: quantization={quantization!r}"
        )
    mode = tflite_modes.get_mode(quantization)
    notes = []
    model, grids, block_size = tflite.grids_of(model, mode, block_size, notes)
    decoder = decoder_for(model)
    if not decoder.num_slots:
        raise ValueError(
            f"to_tflite_generator: {getattr(model, 'name', type(model).__name__)!r} has no "
            "attention layer, so there is no KV cache for the prefill and decode signatures "
            "to carry (each token's logits depend on that token alone); export it with "
            "to_tflite instead. Nothing was written."
        )
    cache_length = _check_cache_length(cache_length, decoder)
    prefill_lengths = _check_prefill_lengths(prefill_lengths, cache_length)
    for name, value in (("verify", verify), ("compact_file", compact_file)):
        common.check_bool(name, value)
    common.check_positive_int("num_threads", num_threads)
    tflite.check_conversion_arguments(mode, representative_dataset, False, block_size)
    limits = resolve_tolerance(mode.tolerance, tolerance)
    rows = _token_rows(verification_data, decoder, cache_length, "verification_data")

    logging.info(
        "to_tflite_generator: tracing %d prefill signatures and decode", len(prefill_lengths)
    )
    samples = generator_signatures.signature_samples(decoder, rows, cache_length, prefill_lengths)
    signatures = generator_signatures.build_signatures(
        decoder, cache_length, prefill_lengths, samples
    )
    traced = converter.trace(signatures, integer_rewrite=mode.integer_rewrite)
    data = None
    if mode.calibrated and not traced.is_qat:
        if representative_dataset is None:
            raise ValueError(
                f"quantization={quantization!r} of a float model needs calibration: pass "
                "representative_dataset= (token ids [N, T >= cache_length]) or export a "
                "quantization-aware (QAT) model. Received: representative_dataset=None"
            )
        calibration_rows = _token_rows(
            representative_dataset, decoder, cache_length, "representative_dataset"
        )
        calibration = generator_signatures.signature_samples(
            decoder, calibration_rows, cache_length, prefill_lengths, per_row=16
        )

        def data():
            for name, found in calibration.items():
                for sample in found:
                    yield name, sample

    float_matmuls = []
    content, compaction = tflite.build_flatbuffer(
        traced,
        mode,
        False,
        data,
        block_size,
        compact_file,
        notes,
        "to_tflite_generator",
        allow_float_ops=allow_float_ops,
        float_matmuls=float_matmuls,
        integer_only=integer_only,
        grids=grids,
    )

    def check(temp):
        summary = tflite.inspect_staged(temp, compaction, notes)
        summary["float_matmuls"] = [str(f) for f in float_matmuls]
        summary["generator"] = {
            "cache_length": cache_length,
            "prefill_lengths": list(prefill_lengths),
            "slots": [list(slot.key_shape) for slot in decoder.slots],
            "decoder": decoder.kind,
        }
        if not verify:
            return summary, None
        logging.info("to_tflite_generator: verifying every signature against Keras")
        verification = verify_signatures(
            temp, signatures, mode=mode.tolerance, tolerance=tolerance, num_threads=num_threads
        )
        failures = list(verification.failures)
        exact = mode.name is None
        agreement = _greedy_agreement(temp, model, rows[0], cache_length, num_threads, exact)
        summary["generator"]["greedy_agreement"] = agreement
        needed = 1.0 if exact else limits["top1"]
        if agreement < needed:
            how = "generating freely" if exact else "along the verification text"
            failures.append(
                f"greedy tokens agree with Keras ({how}) at {agreement:.3f} of positions "
                f"(needed >= {needed})"
            )
        if failures:
            common.raise_verification_error(
                f"Generator export (quantization={quantization!r})", failures, path, verification
            )
        return summary, verification

    return tflite.publish_flatbuffer(
        path, content, check, quantization, traced.num_parameters, notes
    )


def _greedy_agreement(temp, model, row, cache_length, num_threads, exact):
    """Fraction of the staged file's greedy tokens equal to Keras's.

    ``exact`` (float32): both generate freely from a prompt up to the full cache, the
    file through its runner, Keras through ``generation.generate``. Otherwise
    (quantized files, where one near-tie would make the rest of a free run diverge):
    the greedy choice of each at every position of the verification text, given the
    same prefix (teacher forcing).
    """
    runner = GeneratorRunner(temp, num_threads=num_threads)
    if exact:
        prompt = row[None, : min(_GREEDY_PROMPT, cache_length - 1)]
        new = cache_length - prompt.shape[1]
        expected = generate(model, prompt, new)[0, prompt.shape[1] :]
        produced = runner.generate(prompt, new)[0, prompt.shape[1] :]
        return float(np.mean(expected == produced))
    text = row[None, :cache_length]
    decoder = decoder_for(model)
    logits, _ = decoder.step(
        text, np.arange(cache_length, dtype="int32"), decoder.empty_caches(1, cache_length)
    )
    expected = ops.convert_to_numpy(logits)[0].argmax(-1)
    produced = runner.sequence_logits(text[0]).argmax(-1)
    return float(np.mean(expected == produced))


def _check_cache_length(cache_length, decoder):
    if isinstance(cache_length, bool) or not isinstance(cache_length, (int, np.integer)):
        raise TypeError(f"`cache_length` must be an int >= 2. Received: {cache_length!r}")
    if cache_length < 2:
        raise ValueError(f"`cache_length` must be an int >= 2. Received: {cache_length}")
    if decoder.max_length is not None and cache_length > decoder.max_length:
        raise ValueError(
            f"`cache_length` exceeds the model's longest sequence ({decoder.max_length}). "
            f"Received: cache_length={cache_length}"
        )
    return int(cache_length)


def _check_prefill_lengths(prefill_lengths, cache_length):
    if prefill_lengths is None:
        return tuple(n for n in DEFAULT_PREFILL_LENGTHS if n < cache_length)
    lengths = (prefill_lengths,) if isinstance(prefill_lengths, int) else tuple(prefill_lengths)
    bad = [
        n
        for n in lengths
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n < cache_length
    ]
    if not lengths or bad or len(set(lengths)) != len(lengths):
        raise ValueError(
            "`prefill_lengths` must be distinct ints in [1, cache_length). Received: "
            f"prefill_lengths={prefill_lengths!r} with cache_length={cache_length}"
        )
    return tuple(sorted((int(n) for n in lengths), reverse=True))


def _token_rows(data, decoder, cache_length, argument):
    vocab = decoder.vocab_size or 2
    if data is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, vocab, (_VERIFY_ROWS, cache_length)).astype("int32")
    rows = np.asarray(data)
    if rows.ndim != 2 or rows.shape[1] < cache_length or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(
            f"`{argument}` must be int token ids [N, T >= cache_length={cache_length}]. "
            f"Received: shape {rows.shape}, dtype {rows.dtype}"
        )
    if rows.min() < 0 or rows.max() >= vocab:
        raise ValueError(f"`{argument}` must hold token ids in [0, {vocab}).")
    return rows.astype("int32")


__all__ = ["DEFAULT_TOLERANCES", "GENERATOR_MODES", "to_tflite_generator"]
