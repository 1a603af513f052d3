"""``to_tflite_signatures``: several named signatures in one verified ``.tflite``."""

from absl import logging

from keras_llmopt._src.export import (
    common,
    converter,
    files,
    signature,
    tflite,
    tflite_modes,
)
from keras_llmopt._src.export.signature_def import Signature
from keras_llmopt._src.export.signature_verification import verify_signatures
from keras_llmopt._src.export.verification import resolve_tolerance


def to_tflite_signatures(
    signatures,
    path,
    quantization=None,
    representative_dataset=None,
    sparse=False,
    num_threads=None,
    verify=True,
    tolerance=None,
    compact_file=True,
    block_size=None,
    allow_float_ops=False,
    integer_only=False,
):
    """Converts several named signatures into one ``.tflite`` and proves each of them.

    Each ``Signature`` is traced at its fixed input shapes and frozen; all of them are
    converted together (``TFLiteConverter.from_saved_model`` with one signature key
    each), so the file's SignatureDefs carry exactly the given keys, input names and
    output names, and weights the signatures share are stored once. The file is written
    next to ``path`` under a temporary name, every signature is run back in LiteRT
    (``get_signature_runner``) and compared output by output with its ``reference``
    within the mode's tolerance; only then is it moved to ``path``. A mismatch raises
    ``VerificationError`` naming the signature and the output; nothing is left at
    ``path`` and a file already there is kept.

    Args:
        signatures: A list of ``Signature`` with distinct names.
        path: Output ``.tflite`` path.
        quantization: One of ``QUANTIZATION_MODES`` (see ``to_tflite``).
        representative_dataset: For ``"int8"``/``"int16x8"`` of float graphs: a
            callable returning an iterable of ``(signature_name, {input: array})``
            samples (a plain dict is taken for the first signature).
        sparse: Store mostly-zero weights in TFLite's sparse encoding.
        num_threads: LiteRT threads used to verify.
        verify: Run every signature and compare with its reference.
        tolerance: Dict overriding the mode's tolerance keys (``atol``, ``rtol``,
            ``top1``) for every output; a signature's own ``tolerance`` refines it per
            output.
        compact_file: Rewrite the flatbuffer losslessly smaller (``to_tflite``).
        block_size: ``"int4"`` only: input rows per weight scale.
        allow_float_ops: Accept float matmuls in a full-integer mode (``to_tflite``).
        integer_only: ``"int8"``: keep SOFTMAX / GELU integer too (``to_tflite``).

    Returns:
        An ``ExportReport`` whose ``verification`` is a ``SignaturesVerification`` and
        whose ``summary["signatures"]`` lists each signature's input and output names.

    Example:
        >>> import keras, numpy as np
        >>> from keras_llmopt import export
        >>> keras.utils.set_random_seed(0)
        >>> dense = keras.layers.Dense(3)
        >>> def reference(x):
        ...     return {"y": keras.ops.convert_to_numpy(dense(x))}
        >>> signatures = [
        ...     export.Signature("one", lambda x: {"y": dense(x)},
        ...                      [("x", (1, 2), "float32")], ["y"], reference),
        ...     export.Signature("four", lambda x: {"y": dense(x)},
        ...                      [("x", (4, 2), "float32")], ["y"], reference),
        ... ]
        >>> r = export.to_tflite_signatures(signatures, "dense.tflite")
        >>> sorted(r.summary["signatures"]), r.verification.passed
        (['four', 'one'], True)
        >>> runner = export.load_runner("dense.tflite")
        >>> runner.run_signature("four", {"x": np.ones((4, 2), "float32")})["y"].shape
        (4, 3)
    """
    signature.require_tensorflow("to_tflite_signatures")
    path = files.check_path(path)
    if isinstance(signatures, Signature) or not all(isinstance(s, Signature) for s in signatures):
        raise TypeError(
            "`signatures` must be a list of keras_llmopt.export.Signature. Received: "
            f"{signatures!r}"
        )
    signatures = list(signatures)
    mode = tflite_modes.get_mode(quantization)
    common.check_positive_int("num_threads", num_threads)
    tflite.check_conversion_arguments(mode, representative_dataset, sparse, block_size)
    common.check_bool("verify", verify)
    common.check_bool("compact_file", compact_file)
    common.check_bool("allow_float_ops", allow_float_ops)
    common.check_bool("integer_only", integer_only)
    if representative_dataset is not None and not callable(representative_dataset):
        raise TypeError(
            "`representative_dataset` must be a callable returning an iterable of "
            f"(signature_name, dict) samples. Received: {type(representative_dataset).__name__}"
        )
    if tolerance is not None:
        resolve_tolerance(mode.tolerance, tolerance)

    logging.info("to_tflite_signatures: tracing %s", [s.name for s in signatures])
    traced = converter.trace(signatures, integer_rewrite=mode.integer_rewrite)
    if mode.calibrated and representative_dataset is None and not traced.is_qat:
        raise ValueError(
            f"quantization={quantization!r} needs calibration: pass representative_dataset="
            "(a callable yielding (signature_name, dict) samples) or export quantization-"
            "aware graphs. Received: representative_dataset=None on float graphs"
        )
    notes = []
    float_matmuls = []
    content, compaction = tflite.build_flatbuffer(
        traced,
        mode,
        sparse,
        representative_dataset,
        block_size,
        compact_file,
        notes,
        "to_tflite_signatures",
        allow_float_ops=allow_float_ops,
        float_matmuls=float_matmuls,
        integer_only=integer_only,
    )

    def check(temp):
        summary = tflite.inspect_staged(temp, compaction, notes)
        summary["float_matmuls"] = [str(f) for f in float_matmuls]
        if not verify:
            return summary, None
        logging.info("to_tflite_signatures: verifying each signature against its reference")
        verification = verify_signatures(
            temp, signatures, mode=mode.tolerance, tolerance=tolerance, num_threads=num_threads
        )
        if not verification.passed:
            common.raise_verification_error(
                f"TFLite export of signatures {[s.name for s in signatures]} "
                f"(quantization={quantization!r})",
                verification.failures,
                path,
                verification,
            )
        return summary, verification

    return tflite.publish_flatbuffer(
        path, content, check, quantization, traced.num_parameters, notes
    )
