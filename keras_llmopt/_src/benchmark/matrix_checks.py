"""Checks a model-matrix cell runs on its export: verified, integer where claimed, measured.

Each check either returns the cell's figures or raises
:class:`~keras_llmopt._src.benchmark.matrix_outcomes.SilentFailure` when the artifact is
not what the call claims (an unverified file, float matmuls in an "int8" file, no
integer weight in a weight-quantized one).
"""

from absl import logging

from keras_llmopt._src.benchmark import matrix_outcomes as outcomes


def check_verified(report, what):
    """Raises SilentFailure unless ``report``'s artifact passed its verification.

    Example:
        >>> check_verified(report, "to_tflite(int8)")  # doctest: +SKIP
    """
    verification = report.verification
    if verification is None or not verification.passed:
        failures = getattr(verification, "failures", None) or ["no verification"]
        raise outcomes.SilentFailure(
            "unverified file", f"{what} returned an unverified artifact: {'; '.join(failures)}"
        )


def measured(ctx, report, what, label=None):
    """Figures of a verified export, as an ``ok`` cell's text and figures.

    Example:
        >>> text, figures = measured(ctx, report, "int8")  # doctest: +SKIP
        >>> text  # doctest: +SKIP
        'ok 0.27x int8'
    """
    check_verified(report, what)
    counts = outcomes.matmul_inputs(report.summary) if report.format == "tflite" else {}
    figures = {"size_bytes": int(report.size_bytes), "matmuls": counts}
    figures["top1"] = float(report.verification.top1_agreement)
    ratio = None
    try:
        ratio = report.size_bytes / ctx.fp32_size()
    except Exception as error:  # the ratio is missing, the cell still measured
        logging.warning("model matrix: no fp32 .tflite to compare with: %s", error)
    figures["size_ratio"] = ratio
    parts = ["ok"]
    if ratio is not None:
        parts.append(f"{ratio:.2f}x")
    label = label if label is not None else (outcomes.matmul_label(counts) if counts else "")
    if label:
        parts.append(label)
    return " ".join(parts), figures


def require_integer(counts, activations, mode):
    """Raises SilentFailure unless every matmul in ``counts`` has ``activations`` inputs.

    Example:
        >>> require_integer({"FULLY_CONNECTED": {"int8,int8": 4}}, "int8", "int8")
    """
    total = sum(counts.values())
    floating = outcomes.float_matmuls(counts, activations)
    if not total or floating:
        raise outcomes.SilentFailure(
            f"{floating}/{total} matmuls float" if total else "no matmul",
            f"quantization={mode!r} file has {floating}/{total} FULLY_CONNECTED/BATCH_MATMUL "
            f"ops without {activations} inputs: {counts}",
        )


def check_weights(report, mode):
    """A weight-quantized file: integer weights on its FULLY_CONNECTED ops, a smaller file.

    The converter leaves a weight with fewer than 1024 values in float, so a tiny model
    may keep a few float FULLY_CONNECTED; the label counts them. No integer weight at
    all is a silent failure. Int4 weights read back as int8 tensors in LiteRT's Python
    interpreter, so ``int4`` is told from ``int8`` by the size ratio.
    """
    check_verified(report, f"to_tflite({mode})")
    fc = (report.summary.get("matmul_inputs") or {}).get("FULLY_CONNECTED", {})
    total = sum(fc.values())
    integer = sum(n for key, n in fc.items() if key.split(",")[-1] in ("int8", "int4"))
    if total and not integer:
        raise outcomes.SilentFailure(
            "float weights", f"quantization={mode!r}: no FULLY_CONNECTED has integer weights: {fc}"
        )
    return "w-int" if integer == total else f"w-int {integer}/{total}"
