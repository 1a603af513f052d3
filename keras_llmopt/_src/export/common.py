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
    """Checks that ``model`` is a built Keras model and that Keras runs on TensorFlow.

    A model that was never built (a subclassed or Sequential model never called, with
    no ``keras.Input``) has no weights yet: tracing it would create fresh random ones
    and export them, so it is refused before any work.

    Raises:
        TypeError: ``model`` is not a ``keras.Model``.
        ValueError: ``model`` is not built.
        RuntimeError: Keras does not run on TensorFlow.

    Example:
        >>> import keras
        >>> check_model(keras.Sequential([keras.layers.Dense(2)]), "to_tflite")
        Traceback (most recent call last):
        ...
        ValueError: to_tflite: model 'sequential...' is not built: ...
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{what} expects a keras.Model. Received: model of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"{what}: model {model.name!r} is not built: its weights do not exist yet, so "
            "an export would trace it with fresh random weights. Build it first (call it "
            "once on a batch of inputs, e.g. model(token_ids), or start a Sequential model "
            "with keras.Input), then train or load its weights. Received: a "
            f"{type(model).__name__} with model.built=False"
        )
    signature.require_tensorflow(what)


def verification_inputs(model, inputs, data):
    """Inputs (and targets) to verify on: the caller's, or a few random rows.

    Args:
        model: The Keras model (unused; kept for the call sites' symmetry).
        inputs: The artifact's ``ModelInputs``.
        data: ``None``, token ids, a dict of arrays, or ``(inputs, targets)``.

    Example:
        >>> from keras_llmopt._src.core.model_inputs import InputSpec, ModelInputs
        >>> described = ModelInputs((InputSpec("tokens", (1, 4), "int32", "tokens"),))
        >>> rows, targets = verification_inputs(None, described, None)
        >>> rows.shape, targets
        ((4, 4), None)
    """
    del model
    if data is None:
        feeds = signature.sample_inputs(inputs, DEFAULT_VERIFY_ROWS)
        single = not inputs.is_dict and len(inputs.specs) == 1
        return (feeds[inputs.specs[0].name] if single else feeds), None
    return normalize_data(data)


def verify_staged(temp, path, model, inputs, data, tolerance, mode, what, num_threads=None):
    """Verifies the staged artifact ``temp`` against ``model``.

    Raises ``VerificationError`` on a mismatch, saying nothing was written to ``path``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> from keras_llmopt._src.core.model_inputs import describe_inputs
        >>> model = reference.build_gpt("tiny")
        >>> _ = export.to_onnx(model, "gpt.onnx", verify=False)
        >>> verify_staged("gpt.onnx", "gpt.onnx", model, describe_inputs(model), None,
        ...               None, "float32", "example").passed
        True
    """
    tolerance = resolve_tolerance(mode, tolerance)
    feeds, targets = verification_inputs(model, inputs, data)
    runner = runtime.load_runner(temp, num_threads=num_threads)
    if inputs.is_dict and not isinstance(feeds, dict):
        feeds = runner.as_feeds(np.asarray(feeds))
    logging.info("%s: verifying against the Keras model", what)
    produced = runner(feeds)
    reference = keras_outputs(model, feeds)
    report = compare(reference, produced, targets=targets, tolerance=tolerance)
    if not report.passed:
        raise_verification_error(what, report.failures, path, report)
    return report


def staged_check(verify, path, model, inputs, data, tolerance, mode, what, num_threads=None):
    """The ``check(temp)`` that ``files.publish`` runs: :func:`verify_staged`, or nothing.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.core.model_inputs import describe_inputs
        >>> model = reference.build_gpt("tiny")
        >>> check = staged_check(False, "x.onnx", model, describe_inputs(model), None, None,
        ...                      "float32", "example")
        >>> check("x.onnx") is None
        True
    """

    def check(temp):
        if not verify:
            return None
        return verify_staged(temp, path, model, inputs, data, tolerance, mode, what, num_threads)

    return check


def raise_verification_error(what, failures, path, report):
    """Raises the ``VerificationError`` every exporter raises on a mismatch.

    Example:
        >>> try:
        ...     raise_verification_error("Export", ["max abs error 1 > 0"], "m.tflite", None)
        ... except VerificationError as error:
        ...     print(str(error).split(":")[0])
        Export failed verification against the Keras model
    """
    raise VerificationError(
        f"{what} failed verification against the Keras model: "
        + "; ".join(failures)
        + f". Nothing was written to {path!r}. Pass verify=False to keep such an "
        "artifact anyway, or a looser `tolerance=` if this loss is acceptable.",
        report,
    )
