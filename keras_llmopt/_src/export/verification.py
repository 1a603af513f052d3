"""Parity of an exported artifact against its Keras model, with per-mode tolerances."""

import dataclasses
import math

import numpy as np

from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.export import runtime

# err <= atol + rtol * max|reference| on the max absolute error; top1 = least top-1
# agreement; bpb = largest bits-per-byte increase (checked when targets are given).
# None skips that check. Integer modes are judged by top-1 and bits per byte only.
DEFAULT_TOLERANCES = {
    "float32": {"atol": 1e-3, "rtol": 1e-3, "top1": 0.99, "bpb": 0.002},
    "float16": {"atol": 0.05, "rtol": 0.02, "top1": 0.95, "bpb": 0.01},
    "dynamic_int8": {"atol": None, "rtol": None, "top1": 0.90, "bpb": 0.03},
    "int8": {"atol": None, "rtol": None, "top1": 0.90, "bpb": 0.10},
    "int16x8": {"atol": None, "rtol": None, "top1": 0.95, "bpb": 0.05},
    "int4": {"atol": None, "rtol": None, "top1": 0.85, "bpb": 0.10},
}
TOLERANCE_KEYS = ("atol", "rtol", "top1", "bpb")


class VerificationError(ValueError):
    """An exported artifact does not match its Keras model within tolerance.

    Attributes:
        report: The ``VerificationReport`` with the measured figures.

    Example:
        An impossible tolerance stands in for a damaged conversion:

        >>> import os
        >>> from keras_llmopt import export, reference
        >>> try:
        ...     export.to_tflite(reference.build_gpt("tiny"), "refused.tflite",
        ...                      quantization="float16", sequence_length=16,
        ...                      tolerance={"atol": 0.0, "rtol": 0.0})
        ... except export.VerificationError as error:
        ...     print(error.report.max_abs_error > 0, os.path.exists("refused.tflite"))
        True False
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class VerificationReport:
    """How closely an artifact reproduces its Keras model.

    Attributes:
        max_abs_error: Largest absolute difference of outputs.
        mean_abs_error: Mean absolute difference of outputs.
        reference_scale: Largest absolute Keras output (scale of the errors).
        top1_agreement: Fraction of positions whose arg-max matches Keras.
        bpb_model: Bits per byte of the Keras model (``None`` without targets).
        bpb_artifact: Bits per byte of the artifact (``None`` without targets).
        num_positions: Number of compared positions.
        tolerance: The tolerance applied.
        failures: Human-readable reasons it failed; empty when it passed.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny")
        >>> _ = export.to_tflite(model, "gpt.tflite", sequence_length=16, verify=False)
        >>> tokens = np.random.default_rng(0).integers(0, 256, (4, 16)).astype("int32")
        >>> report = export.verify("gpt.tflite", model, tokens)
        >>> report.passed, report.top1_agreement > 0.99
        (True, True)
    """

    max_abs_error: float
    mean_abs_error: float
    reference_scale: float
    top1_agreement: float
    bpb_model: float | None
    bpb_artifact: float | None
    num_positions: int
    tolerance: dict
    failures: tuple = ()

    @property
    def passed(self):
        """Whether every check is within tolerance."""
        return not self.failures

    @property
    def bpb_delta(self):
        """Bits per byte of the artifact minus the model's (``None`` without targets)."""
        if self.bpb_model is None:
            return None
        return self.bpb_artifact - self.bpb_model

    def to_dict(self):
        """The figures as a plain dict.

        Example:
            >>> import numpy as np
            >>> from keras_llmopt import export, reference
            >>> model = reference.build_gpt("tiny")
            >>> _ = export.to_onnx(model, "gpt.onnx", verify=False)
            >>> tokens = np.zeros((2, 16), "int32")
            >>> export.verify("gpt.onnx", model, tokens).to_dict()["passed"]
            True
        """
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        out["bpb_delta"] = self.bpb_delta
        return out


def resolve_tolerance(mode, tolerance):
    """Merges a user tolerance dict over the defaults of ``mode``."""
    merged = dict(DEFAULT_TOLERANCES[mode])
    if tolerance is None:
        return merged
    if not isinstance(tolerance, dict):
        raise TypeError(
            f"`tolerance` must be a dict with keys from {TOLERANCE_KEYS}. "
            f"Received: tolerance={tolerance!r}"
        )
    unknown = sorted(set(tolerance) - set(TOLERANCE_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown tolerance keys {unknown}. Received: tolerance={tolerance!r}; "
            f"accepted keys: {TOLERANCE_KEYS}"
        )
    merged.update(tolerance)
    return merged


def normalize_data(data, num_inputs_hint=None):
    """Splits verification data into ``(inputs, targets)``; targets may be ``None``.

    Accepts an int array of windows, a dict of arrays, or a tuple ``(inputs, targets)``.
    """
    del num_inputs_hint
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(
                "Verification data as a tuple must be (inputs, targets). "
                f"Received: a tuple of {len(data)} items"
            )
        inputs, targets = data
        return inputs, None if targets is None else np.asarray(targets)
    return data, None


def keras_outputs(model, inputs, batch_size=16):
    """Runs the Keras model on ``inputs`` in chunks; returns float32 numpy outputs."""
    import keras

    from keras_llmopt._src.export.signature import single_output

    rows = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    outs = []
    for start in range(0, rows, batch_size):
        if isinstance(inputs, dict):
            chunk = {k: np.asarray(v[start : start + batch_size]) for k, v in inputs.items()}
        else:
            chunk = np.asarray(inputs[start : start + batch_size])
        out = single_output(model(chunk, training=False))
        outs.append(keras.ops.convert_to_numpy(out).astype(np.float32))
    return np.concatenate(outs, axis=0)


def compare(reference, produced, targets=None, tolerance=None):
    """Compares two output arrays; returns a ``VerificationReport``."""
    tolerance = dict(DEFAULT_TOLERANCES["float32"] if tolerance is None else tolerance)
    if reference.shape != produced.shape:
        raise ValueError(
            f"The artifact's output shape {produced.shape} differs from the model's "
            f"{reference.shape}."
        )
    diff = np.abs(reference.astype(np.float64) - produced.astype(np.float64))
    finite = bool(np.all(np.isfinite(produced)))
    max_err = float(np.max(diff)) if finite else math.inf
    mean_err = float(np.mean(diff)) if finite else math.inf
    scale = float(np.max(np.abs(reference)))
    top1 = float(np.mean(reference.argmax(-1) == produced.argmax(-1)))
    bpb_model = bpb_artifact = None
    if targets is not None:
        bpb_model = bits_per_byte(reference, targets)
        bpb_artifact = bits_per_byte(produced, targets) if finite else math.inf
    failures = []
    if not finite:
        failures.append("the artifact's outputs contain NaN or Inf")
    if tolerance.get("atol") is not None:
        allowed = tolerance["atol"] + (tolerance.get("rtol") or 0.0) * scale
        if max_err > allowed:
            failures.append(
                f"max abs error {max_err:.4g} > {allowed:.4g} allowed (by {max_err - allowed:.4g};"
                f" output scale {scale:.4g})"
            )
    if tolerance.get("top1") is not None and top1 < tolerance["top1"]:
        failures.append(
            f"top-1 agreement {top1:.4f} < {tolerance['top1']:.4f} required "
            f"(short by {tolerance['top1'] - top1:.4f})"
        )
    if bpb_model is not None and tolerance.get("bpb") is not None:
        delta = bpb_artifact - bpb_model
        if delta > tolerance["bpb"]:
            failures.append(
                f"bits per byte {bpb_model:.4f} -> {bpb_artifact:.4f} (+{delta:.4f} > "
                f"+{tolerance['bpb']:.4f} allowed, by {delta - tolerance['bpb']:.4f})"
            )
    return VerificationReport(
        max_abs_error=max_err,
        mean_abs_error=mean_err,
        reference_scale=scale,
        top1_agreement=top1,
        bpb_model=bpb_model,
        bpb_artifact=bpb_artifact,
        num_positions=int(np.prod(reference.shape[:-1])),
        tolerance=tolerance,
        failures=tuple(failures),
    )


def bits_per_byte(logits, targets):
    """Mean next-token cross-entropy in bits (bits per byte for byte tokens)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, np.asarray(targets, np.int64)[..., None], axis=-1)
    return float(np.mean(log_norm - picked[..., 0]) / math.log(2.0))


def verify(
    artifact_path, model, inputs, targets=None, tolerance=None, mode="float32", num_threads=None
):
    """Runs an artifact and its Keras model on the same inputs and compares them.

    The artifact runs in LiteRT (``.tflite``), ONNX Runtime (``.onnx``) or TensorFlow
    (SavedModel folder). With ``targets`` (next tokens of the reference LM's validation
    windows: ``inputs = w[:, :-1]``, ``targets = w[:, 1:]``), bits per byte of both are
    reported too.

    Default tolerances per ``mode`` (``DEFAULT_TOLERANCES``): ``float32`` max abs error
    ``<= 1e-3 + 1e-3 * max|logits|``, top-1 >= 0.99, bpb +0.002; ``float16`` 0.05 +
    0.02 * scale, top-1 >= 0.95, bpb +0.01; ``dynamic_int8`` top-1 >= 0.90, bpb +0.03;
    ``int8`` top-1 >= 0.90, bpb +0.10; ``int16x8`` top-1 >= 0.95, bpb +0.05.

    Args:
        artifact_path: Path of the exported artifact.
        model: The Keras model it was exported from.
        inputs: Int token array ``(B, T)`` or a dict of arrays (multi-input models).
        targets: Optional next-token ids ``(B, T)`` for bits per byte.
        tolerance: Optional dict overriding keys of the mode's defaults (``atol``,
            ``rtol``, ``top1``, ``bpb``; ``None`` skips a check).
        mode: Which defaults apply: one of ``DEFAULT_TOLERANCES``.
        num_threads: CPU threads for the runtime.

    Returns:
        A ``VerificationReport`` (check ``.passed`` and ``.failures``); it does not raise
        on a mismatch, the ``to_*`` exporters do.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny")
        >>> _ = export.to_tflite(model, "gpt.tflite", sequence_length=32, verify=False)
        >>> windows = np.random.default_rng(0).integers(0, 256, (4, 33)).astype("int32")
        >>> report = export.verify("gpt.tflite", model, windows[:, :-1], windows[:, 1:])
        >>> report.passed, abs(report.bpb_artifact - report.bpb_model) < 1e-3
        (True, True)

        On the reference corpus: ``windows = reference.evaluation_windows(corpus, 32)``.
    """
    if mode not in DEFAULT_TOLERANCES:
        raise ValueError(
            f"Unknown verification mode. Received: mode={mode!r}; accepted: "
            f"{sorted(DEFAULT_TOLERANCES)}"
        )
    tolerance = resolve_tolerance(mode, tolerance)
    runner = runtime.load_runner(artifact_path, num_threads=num_threads)
    if not isinstance(inputs, dict):
        inputs = np.asarray(inputs)
        if inputs.ndim != 2:
            raise ValueError(
                f"`inputs` must be token ids of shape (batch, length) or a dict of arrays. "
                f"Received: inputs of shape {inputs.shape}"
            )
    if describe_inputs(model).is_dict and not isinstance(inputs, dict):
        inputs = runner.as_feeds(inputs)
    produced = runner(inputs)
    reference = keras_outputs(model, inputs)
    return compare(reference, produced, targets=targets, tolerance=tolerance)
