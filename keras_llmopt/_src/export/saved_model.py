"""``to_saved_model``: a Keras model to a verified TensorFlow SavedModel folder."""

from absl import logging

from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.export import common, files, report, signature


def to_saved_model(
    model,
    path,
    sequence_length=None,
    batch_size=None,
    verify=True,
    tolerance=None,
    verification_data=None,
):
    """Saves a Keras model as a SavedModel with a ``serving_default`` signature.

    The signature takes the model's named inputs (e.g. ``tokens``, or ``token_ids`` and
    ``padding_mask``) and returns ``{"output": ...}``. The folder is written next to
    ``path`` under a temporary name, reloaded and compared with Keras (float32
    tolerance), then moved to ``path``.

    Args:
        model: A Keras model.
        path: Output folder.
        sequence_length: Fixed input length (default: keep the model's, dynamic if so).
        batch_size: Fixed batch size (default ``None``: dynamic).
        verify: Reload and compare with Keras; a mismatch raises ``VerificationError``.
        tolerance: Dict overriding tolerance keys.
        verification_data: Token ids, a dict, or ``(inputs, targets)``.

    Returns:
        An ``ExportReport``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> report = export.to_saved_model(reference.build_gpt("tiny"), "gpt_savedmodel")
        >>> report.format, report.verification.passed
        ('saved_model', True)
    """
    import tensorflow as tf

    common.check_model(model, "to_saved_model")
    path = files.check_path(path)
    common.check_positive_int("sequence_length", sequence_length)
    common.check_positive_int("batch_size", batch_size)
    common.check_bool("verify", verify)
    if tolerance is not None:
        from keras_llmopt._src.export.verification import resolve_tolerance

        resolve_tolerance("float32", tolerance)
    inputs = describe_inputs(model, sequence_length, batch_size, keep_dynamic=True)
    if not inputs.declared:  # a subclassed model is traced at its own (maximum) length
        inputs = describe_inputs(model, sequence_length, batch_size)
    function = signature.serving_function(model, inputs)
    module = tf.Module()
    module.model = model
    module.serve = function
    verify_inputs = describe_inputs(model, sequence_length, batch_size)
    if verify_inputs.has_dynamic_length:
        verify_inputs = describe_inputs(model, 16, batch_size)

    def write(temp):
        logging.info("to_saved_model: saving %s", model.name)
        tf.saved_model.save(module, temp, signatures={signature.SERVING_KEY: function})

    check = common.staged_check(
        verify,
        path,
        model,
        verify_inputs,
        verification_data,
        tolerance,
        "float32",
        "SavedModel export",
    )
    verification = files.publish(path, write, check, folder=True)
    return report.ExportReport(
        path=path,
        format="saved_model",
        quantization=None,
        size_bytes=report.artifact_size(path),
        num_parameters=int(model.count_params()),
        summary={
            "inputs": [(s.name, s.dtype, s.shape) for s in inputs.specs],
            "signature": "serving_default",
        },
        verification=verification,
        notes=(),
    )
