"""Argument checks and verification plumbing shared by the ``to_*`` exporters."""

import numpy as np
from absl import logging

from keras_llmopt._src.export import runtime, signature
from keras_llmopt._src.export.verification import (
    VerificationError,
    compare,
    keras_outputs,
    normalize_data,
    resolve_tolerance,
)

DEFAULT_VERIFY_ROWS = 4


def check_positive_int(name, value, allow_none=True):
    """Raises ``ValueError`` unless ``value`` is a positive int (or ``None`` if allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        accepted = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")


def check_bool(name, value):
    """Raises ``TypeError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")


def check_model(model, what):
    """Raises ``TypeError`` unless ``model`` is a Keras model; checks the backend."""
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{what} expects a keras.Model. Received: model of type {type(model).__name__}"
        )
    signature.require_tensorflow(what)


def verification_inputs(model, specs, is_dict, data):
    """Inputs (and targets) to verify on: the caller's, or a few random rows."""
    if data is None:
        feeds = signature.sample_inputs(specs, model, DEFAULT_VERIFY_ROWS)
        inputs = feeds if (is_dict or len(specs) > 1) else feeds[specs[0].name]
        return inputs, None
    return normalize_data(data)


def verify_staged(temp, path, model, specs, is_dict, data, tolerance, mode, what, num_threads=None):
    """Verifies the staged artifact ``temp``; raises ``VerificationError`` on mismatch."""
    tolerance = resolve_tolerance(mode, tolerance)
    inputs, targets = verification_inputs(model, specs, is_dict, data)
    runner = runtime.load_runner(temp, num_threads=num_threads)
    if is_dict and not isinstance(inputs, dict):
        inputs = runner.as_feeds(np.asarray(inputs))
    logging.info("%s: verifying against the Keras model", what)
    produced = runner(inputs)
    reference = keras_outputs(model, inputs)
    report = compare(reference, produced, targets=targets, tolerance=tolerance)
    if not report.passed:
        raise VerificationError(
            f"{what} failed verification against the Keras model: "
            + "; ".join(report.failures)
            + f". Nothing was written to {path!r}. Pass verify=False to keep such an "
            "artifact anyway, or a looser `tolerance=` if this loss is acceptable.",
            report,
        )
    return report
