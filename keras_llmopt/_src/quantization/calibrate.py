"""``calibrate``: post-training activation ranges for a quantized model, without training.

The model runs eagerly on calibration batches; every activation quantizer adds
what it observes to a streaming histogram (``calibration.Histogram``), and a
range chooser (``minmax``, ``percentile``, ``mse``, ``entropy``: the histogram
quantization methods) sets its range variables. Attention scores are observed
over unmasked positions only, as in training.
"""

import contextlib

import keras
import numpy as np
from absl import logging

from keras_llmopt._src.core import hooks
from keras_llmopt._src.quantization import calibration as calibration_lib
from keras_llmopt._src.quantization import layer_quantizers
from keras_llmopt._src.quantization import state as state_lib


def _batches(dataset, batch_size, num_batches, length):
    def cut(x):
        x = np.asarray(x)
        if length is not None and x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
            x = x[:, :length]
        return x

    if isinstance(dataset, dict):
        first = next(iter(dataset.values()))
        for start in range(0, len(first), batch_size):
            yield {k: cut(v[start : start + batch_size]) for k, v in dataset.items()}
        return
    if isinstance(dataset, np.ndarray):
        data = dataset
        if data.ndim == 0 or len(data) == 0:
            raise ValueError(f"`dataset` is empty. Received: shape {data.shape}")
        for start in range(0, len(data), batch_size):
            yield cut(data[start : start + batch_size])
        return
    try:
        iterator = iter(dataset)
    except TypeError:
        raise TypeError(
            "`dataset` must be an array of inputs (e.g. token ids (N, T)), a dict of arrays "
            "or an iterable of batches (x or (x, y)), such as a tf.data.Dataset. "
            f"Received: dataset of type {type(dataset).__name__}"
        ) from None
    for item in iterator:
        if isinstance(item, tuple | list) and len(item) in (2, 3):
            item = item[0]
        if isinstance(item, dict):
            yield {k: cut(keras.ops.convert_to_numpy(v)) for k, v in item.items()}
        else:
            yield cut(keras.ops.convert_to_numpy(item))


@contextlib.contextmanager
def _observing(named, histograms):
    """Within the block, each quantizer's observed tensors go into its histogram."""

    def recorder(quantizer):
        histogram = histograms.setdefault(
            id(quantizer), calibration_lib.Histogram(num_bins=1024, signed=True)
        )

        def make(original):
            def observe(observed):
                histogram.update(keras.ops.convert_to_numpy(keras.ops.cast(observed, "float32")))
                return original(observed)

            return observe

        return make

    with contextlib.ExitStack() as stack:
        for _, quantizer in named:
            stack.enter_context(hooks.intercept(quantizer, "observe", recorder(quantizer)))
        stack.enter_context(layer_quantizers.observing_float_activations())
        yield


def calibrate(model, dataset, method="minmax", num_batches=None, batch_size=8, percentile=99.99):
    """Sets the activation ranges of a quantized model from calibration data (PTQ).

    Args:
        model: A model from ``quantize_model`` / ``quantize_apply`` (modified in
            place: only its range variables change).
        dataset: Inputs: a NumPy array (token ids ``(N, T)``; longer rows, e.g.
            corpus windows of ``T + 1``, are cut to the model's sequence length), a
            dict of arrays, or an iterable (list, generator, ``tf.data``) of batches
            ``x`` or ``(x, y)``.
        method: ``"minmax"``, ``"percentile"``, ``"mse"`` or ``"entropy"``.
        num_batches: Stop after this many batches (default: all).
        batch_size: Rows per batch for array inputs.
        percentile: For ``"percentile"``: percent of values kept inside the range.

    Returns:
        ``{quantizer name: (min, max)}`` of the ranges set.

    Raises:
        ValueError: Unknown method, a model without activation quantizers, or
            empty data.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt.quantization import quantize_model
        >>> q = quantize_model(reference.build_gpt("tiny"))
        >>> ranges = calibrate(q, np.random.randint(0, 256, (8, 64)), method="percentile")
    """
    if method not in calibration_lib.METHODS:
        raise ValueError(
            f"Unknown calibration method. Accepted: {', '.join(calibration_lib.METHODS)}. "
            f"Received: method={method!r}"
        )
    for name, value in (("batch_size", batch_size), ("num_batches", num_batches)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    found = state_lib.states(model) if isinstance(model, keras.Model) else []
    named = [(f"{path}:{n}", q) for path, s in found for n, q in s.activation_quantizers()]
    if not named:
        raise ValueError(
            "`model` has no activation quantizers to calibrate: pass a model from "
            "quantize_model(model) with a scheme that quantizes activations. Received: "
            f"model={getattr(model, 'name', model)!r}"
        )
    from keras_llmopt._src.core.model_inputs import infer_sequence_length

    length = infer_sequence_length(model)
    seen = 0
    histograms = {}
    with _observing(named, histograms):
        for batch in _batches(dataset, batch_size, num_batches, length):
            model(batch, training=False)
            seen += 1
            if seen % 10 == 0:
                logging.info("calibrate: %d batches", seen)
            if num_batches is not None and seen >= num_batches:
                break
    if not seen:
        raise ValueError("`dataset` yielded no batches.")
    ranges = {}
    for name, quantizer in named:
        entry = histograms.get(id(quantizer))
        if entry is None or not entry.total:
            logging.warning("calibrate: %s saw no data; its range is unchanged.", name)
            continue
        lo, hi = calibration_lib.choose_range(
            entry,
            method,
            num_bits=quantizer.num_bits,
            symmetric=quantizer.symmetric,
            percentile=percentile,
        )
        quantizer.set_range(lo, hi)
        ranges[name] = (lo, hi)
    logging.info("calibrate: set %d ranges with method=%s on %d batches", len(ranges), method, seen)
    return ranges
