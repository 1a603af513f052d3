"""Calibration data for one-shot compression, as the batches the model itself takes.

Accepted: int token ids ``(N, T)``; a dict of arrays (a KerasHub CausalLM's
``token_ids`` / ``padding_mask``); a ``tf.data.Dataset`` or any iterable of such
batches (``(x, y)`` pairs too); or strings, for a KerasHub CausalLM with a
preprocessor. Token ids only are held (the activations never are).
"""

import keras
import numpy as np

from keras_llmopt._src.core import model_inputs


def _as_numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _rows(data, model, sequence_length):
    """Yields one example at a time as ``{name: array}`` or an array."""
    if isinstance(data, str) or (
        isinstance(data, list | tuple) and data and all(isinstance(s, str) for s in data)
    ):
        yield from _from_strings(
            [data] if isinstance(data, str) else list(data), model, sequence_length
        )
        return
    if isinstance(data, dict):
        data = {k: _as_numpy(v) for k, v in data.items()}
        for i in range(len(next(iter(data.values())))):
            yield {k: v[i] for k, v in data.items()}
        return
    if isinstance(data, np.ndarray) or keras.ops.is_tensor(data):
        array = _as_numpy(data)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                "`calibration_data` as an array must be int token ids of shape (N, T). "
                f"Received: dtype {array.dtype}, shape {array.shape}"
            )
        yield from array
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(
            "`calibration_data` must be int token ids (N, T), a dict of arrays, strings "
            "(KerasHub CausalLM with a preprocessor), a tf.data.Dataset or an iterable of "
            f"batches. Received: {type(data).__name__}"
        ) from None
    for batch in iterator:
        if isinstance(batch, tuple | list) and len(batch) in (2, 3):
            batch = batch[0]
        if isinstance(batch, str):
            yield from _from_strings([batch], model, sequence_length)
        elif isinstance(batch, dict):
            batch = {k: _as_numpy(v) for k, v in batch.items()}
            for i in range(len(next(iter(batch.values())))):
                yield {k: v[i] for k, v in batch.items()}
        else:
            array = _as_numpy(batch)
            yield from (array if array.ndim == 2 else array[None])


def _from_strings(strings, model, sequence_length):
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        raise ValueError(
            f"`calibration_data` holds strings, but model {model.name!r} has no "
            "`preprocessor` to tokenize them. Pass token ids (N, T) instead. Received: "
            f"{len(strings)} strings"
        )
    if sequence_length is not None and hasattr(preprocessor, "sequence_length"):
        previous = preprocessor.sequence_length
        preprocessor.sequence_length = sequence_length
    else:
        previous = None
    try:
        x = preprocessor(strings)
    finally:
        if previous is not None:
            preprocessor.sequence_length = previous
    if isinstance(x, tuple):
        x = x[0]
    x = {k: _as_numpy(v) for k, v in x.items()}
    for i in range(len(strings)):
        yield {k: v[i] for k, v in x.items()}


def _cut(example, length):
    if length is None:
        return example
    if isinstance(example, dict):
        return {k: v[:length] if v.ndim >= 1 else v for k, v in example.items()}
    return example[:length]


def _to_model_batch(examples, described):
    if isinstance(examples[0], dict):
        return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    tokens = np.stack(examples).astype("int32")
    if not described.is_dict:
        return tokens
    values = []
    for spec in described.specs:
        if spec.is_tokens:
            values.append(tokens)
        elif spec.is_mask:
            values.append(np.ones(tokens.shape, dtype=spec.dtype))
        else:
            raise ValueError(
                f"The model's input {spec.name!r} is neither token ids nor a mask, so token "
                "ids alone cannot feed it. Pass `calibration_data` as a dict of arrays keyed "
                f"by input name. Received: token ids {tokens.shape}"
            )
    return described.pack(values)


def calibration_batches(model, data, num_samples=128, sequence_length=None, batch_size=8):
    """The first ``num_samples`` calibration examples, in model-ready batches.

    Args:
        model: The model to calibrate (its inputs decide the batch layout).
        data: See the module docstring.
        num_samples: Examples used (fewer if the data holds fewer).
        sequence_length: Cut every example to this many positions (``None``: as given).
        batch_size: Examples per batch.

    Returns:
        A list of batches (arrays or dicts of arrays).

    Raises:
        ValueError: No examples, or examples the model cannot take.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny")
        >>> batches = calibration_batches(model, np.zeros((10, 16), "int32"), 6, 8, 4)
        >>> [b.shape for b in batches]
        [(4, 8), (2, 8)]
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if sequence_length is not None and (
        not isinstance(sequence_length, int)
        or isinstance(sequence_length, bool)
        or sequence_length < 1
    ):
        raise ValueError(
            "`sequence_length` must be None or a positive integer. "
            f"Received: sequence_length={sequence_length!r}"
        )
    described = model_inputs.describe_inputs(model, keep_dynamic=True)
    examples = []
    for example in _rows(data, model, sequence_length):
        examples.append(_cut(example, sequence_length))
        if len(examples) == num_samples:
            break
    if not examples:
        raise ValueError("`calibration_data` holds no examples. Received: an empty dataset")
    return [
        _to_model_batch(examples[i : i + batch_size], described)
        for i in range(0, len(examples), batch_size)
    ]
