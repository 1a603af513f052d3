"""``to_tflite``: a Keras model to a verified ``.tflite`` in any converter mode."""

from absl import logging

from keras_llmopt._src.export import (
    calibration,
    common,
    compact,
    files,
    int4,
    report,
    runtime,
    signature,
)

QUANTIZATION_MODES = (None, "float16", "dynamic_int8", "int8", "int16x8", "int4")
_CALIBRATED = ("int8", "int16x8")


def to_tflite(
    model,
    path,
    quantization=None,
    representative_dataset=None,
    sequence_length=None,
    batch_size=1,
    sparse=False,
    num_threads=None,
    verify=True,
    tolerance=None,
    verification_data=None,
    compact_file=True,
    block_size=None,
):
    """Converts a Keras model to a ``.tflite`` file and proves it against the model.

    The model is traced with a fixed input signature (``batch_size``,
    ``sequence_length``), its variables are frozen into the graph (so the weights are
    in the file) and converted. The artifact is written to a temporary file next to
    ``path``, run back in LiteRT and compared with Keras; only then is it moved to
    ``path``. On any failure nothing is left at ``path`` and a file already there is
    kept.

    Modes (``quantization``):
        * ``None``: float32.
        * ``"float16"``: float16 weights, float compute.
        * ``"dynamic_int8"``: int8 weights, activations quantized on the fly.
        * ``"int8"``: full-integer. From a QAT model (fake-quant ops in the graph) it
          uses the learned ranges; from a float model it calibrates on
          ``representative_dataset``. Token inputs stay int32, logits float32. The
          converter's post-training int8 can wreck a transformer: verification
          (top-1 agreement, bits per byte) catches it and raises. The graph is
          rewritten first as for ``"int16x8"`` (the attention-mask fill, see
          ``signature.rewrite_for_integer``).
        * ``"int16x8"``: int16 activations, int8 weights, calibrated. The graph is
          rewritten first (``signature.rewrite_for_integer``) because the converter's
          16x8 quantizer otherwise fails on the int32 token input ("Empty min/max for
          tensor tokens"), LiteRT has no int16 SquaredDifference kernel, and the
          attention mask's -3.4e38 fill ruins the softmax input's int16 scale; ops
          without 16x8 kernels (NEG, SELECT_V2) stay in float.

        * ``"int4"``: int4 weights (per output channel, or per ``block_size`` input
          rows), float activations quantized on the fly for the integer matmuls: the
          fp32 file requantized by LiteRT's AI Edge Quantizer (see ``int4.py``).

    A weight-only quantization-aware model (``"4bit_weights*"`` schemes) is exported
    through ``strip_quantization``: its dequantized weights, in any mode; with
    ``"int4"`` and no ``block_size``, in its scheme's groups.

    Default tolerances per mode are in ``verification.DEFAULT_TOLERANCES`` (float32:
    max abs error <= 1e-3 + 1e-3 * max|output|, top-1 >= 0.99; float16: 0.05 + 0.02 *
    scale, top-1 >= 0.95; integer modes: top-1 agreement and bits-per-byte increase).

    Args:
        model: A Keras model (functional, Sequential, subclassed with int32 ``tokens``
            input, KerasHub backbone with ``token_ids``/``padding_mask``).
        path: Output ``.tflite`` path.
        quantization: One of ``QUANTIZATION_MODES``.
        representative_dataset: Calibration data for ``"int8"``/``"int16x8"`` from a
            float model: token-id array ``(N, T')`` (e.g. corpus windows), a dict of
            arrays, or a callable returning an iterable of samples.
        sequence_length: Fixed length of the exported inputs (default: the model's
            own, e.g. the reference GPT's learned positions). Required for models with
            dynamic length and no declared maximum (e.g. KerasHub Llama).
        batch_size: Fixed batch size of the artifact.
        sparse: Store pruned (mostly zero) weights in TFLite's sparse encoding.
        num_threads: LiteRT threads used to verify.
        verify: Run the artifact and compare with Keras; a mismatch beyond tolerance
            raises ``VerificationError`` (a ``ValueError``) that says by how much.
        tolerance: Dict overriding the mode's tolerance keys (``atol``, ``rtol``,
            ``top1``, ``bpb``).
        verification_data: Inputs to verify on: token ids ``(B, T)``, a dict, or a
            tuple ``(inputs, targets)`` to also compare bits per byte (default: 4
            random rows of valid token ids).
        block_size: ``"int4"`` only: input rows per weight scale (32, 64, 128, 256)
            instead of one scale per output channel.
        compact_file: Rewrite the converter's flatbuffer losslessly smaller
            (``compact.compact_tflite``): identical quantization and shape vectors
            stored once (per-channel weights' int64 zero points are all zero) and
            internal tensor names dropped; inputs, outputs and signatures keep their
            names and the outputs are bit-identical. ``summary["compaction"]`` says
            what it saved. Pass ``False`` to keep the names for debugging.

    Returns:
        An ``ExportReport``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny")
        >>> r = export.to_tflite(model, "gpt.tflite", quantization="dynamic_int8")
        >>> r.size_bytes, r.verification.top1_agreement
    """
    common.check_model(model, "to_tflite")
    path = files.check_path(path)
    if quantization not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unknown TFLite quantization mode. Received: quantization={quantization!r}; "
            f"accepted: {list(QUANTIZATION_MODES)}"
        )
    common.check_positive_int("sequence_length", sequence_length)
    common.check_positive_int("batch_size", batch_size, allow_none=False)
    common.check_positive_int("num_threads", num_threads)
    common.check_bool("sparse", sparse)
    common.check_bool("verify", verify)
    common.check_bool("compact_file", compact_file)
    if representative_dataset is not None and quantization not in _CALIBRATED:
        raise ValueError(
            "`representative_dataset` is only used by quantization='int8' or 'int16x8'. "
            f"Received: quantization={quantization!r} with a representative_dataset"
        )
    int4.check_block_size(block_size)
    if sparse and quantization == "int4":
        raise ValueError(
            "quantization='int4' packs weights two to a byte and cannot also store them "
            "sparsely. Received: sparse=True with quantization='int4'"
        )
    if block_size is not None and quantization != "int4":
        raise ValueError(
            "`block_size` is only used by quantization='int4'. "
            f"Received: block_size={block_size!r} with quantization={quantization!r}"
        )
    mode = quantization or "float32"
    if tolerance is not None:
        from keras_llmopt._src.export.verification import resolve_tolerance

        resolve_tolerance(mode, tolerance)

    notes = []
    model, weight_only = _dequantized_if_weight_only(model)
    if weight_only:
        notes.append(
            f"weight-only quantization-aware model ({weight_only.name}): exported its "
            "dequantized weights (strip_quantization), stored at this mode's precision"
        )
        if quantization == "int4" and block_size is None:
            block_size = weight_only.weight_group_size
    specs, is_dict = signature.input_specs(model, sequence_length, batch_size)
    if any(None in s.shape for s in specs):
        raise ValueError(
            "to_tflite: the model's inputs have a dynamic length and it declares no "
            f"maximum. Received: sequence_length=None for inputs {[s.name for s in specs]}; "
            "pass sequence_length=N"
        )
    logging.info("to_tflite: tracing %s with inputs %s", model.name, [s.shape for s in specs])
    frozen = signature.frozen_function(signature.serving_function(model, specs, is_dict))
    is_qat = signature.has_fake_quant(frozen)
    if quantization == "int4" and is_qat:
        raise ValueError(
            "quantization='int4' stores weights only and keeps activations float, but this "
            "model is quantization-aware with activation ranges. Export it with 'int8' / "
            "'int16x8', or quantize with a weight-only scheme ('4bit_weights*'). Received: "
            f"scheme={getattr(getattr(model, 'quantize_report', None), 'scheme', None)!r}"
        )
    if quantization in _CALIBRATED and representative_dataset is None and not is_qat:
        raise ValueError(
            f"quantization={quantization!r} needs calibration: pass representative_dataset="
            "(token-id windows, e.g. corpus.train[:64]) or export a quantization-aware "
            "trained model. Received: representative_dataset=None on a float model"
        )
    if quantization in ("int16x8", "int8"):
        frozen, changed = signature.rewrite_for_integer(frozen)
        if changed:
            notes.append(
                f"{quantization}: rewrote {changed} graph nodes (token-id wrap, "
                "SquaredDifference, attention-mask fill)"
            )
    if is_qat:
        notes.append("quantization ranges learned by QAT (fake-quant ops) are used")

    converter = _converter(
        model,
        frozen,
        None if quantization == "int4" else quantization,
        representative_dataset,
        specs,
        is_dict,
        batch_size,
        sparse,
        is_qat,
    )
    logging.info("to_tflite: converting (quantization=%s, sparse=%s)", quantization, sparse)
    try:
        content = converter.convert()
    except Exception as error:  # the converter raises many types; keep its message
        raise RuntimeError(
            f"to_tflite: the TFLite converter failed for quantization={quantization!r}, "
            f"sparse={sparse}: {error}"
        ) from error
    if quantization == "int4":
        content = int4.quantize_weights_int4(content, block_size)
        granularity = "per output channel" if block_size is None else f"blocks of {block_size}"
        notes.append(f"int4 weights ({granularity}) by the AI Edge Quantizer")
    compaction = None
    if compact_file:
        content, compaction = compact.compact_tflite(content)
        if compaction["reason"]:
            notes.append(f"flatbuffer not compacted: {compaction['reason']}")

    with files.staged_file(path) as temp:
        with open(temp, "wb") as handle:
            handle.write(content)
        summary = report.tflite_summary(temp)
        xnnpack_error = runtime.TFLiteRunner(temp).xnnpack_error
        if xnnpack_error:
            notes.append(
                "LiteRT's XNNPACK delegate cannot run this artifact; it runs on the builtin "
                f"kernels (slower). XNNPACK said: {xnnpack_error.strip()}"
            )
        summary["xnnpack"] = xnnpack_error is None
        if compaction is not None:
            summary["compaction"] = compaction
        if xnnpack_error is None:
            summary["xnnpack_fallback_ops"] = report.xnnpack_fallback_ops(temp)
        verification = None
        if verify:
            verification = common.verify_staged(
                temp,
                path,
                model,
                specs,
                is_dict,
                verification_data,
                tolerance,
                mode,
                f"TFLite export (quantization={quantization!r})",
                num_threads,
            )
        files.commit(temp, path)
    result = report.ExportReport(
        path=path,
        format="tflite",
        quantization=quantization,
        size_bytes=report.artifact_size(path),
        num_parameters=int(model.count_params()),
        summary=summary,
        verification=verification,
        notes=tuple(notes),
    )
    logging.info("to_tflite: wrote %s (%d bytes)", path, result.size_bytes)
    return result


def _dequantized_if_weight_only(model):
    """``(strip_quantization(model), scheme)`` for a weight-only QAT model, else ``(model, None)``.

    Weight-only schemes (``"4bit_weights*"``) put fake-quantized weights in the graph
    and nothing else; the converter cannot read sub-8-bit fake quantization (a 4-bit
    embedding table fails in GATHER), and the dequantized weights compute the same.
    The scheme is the first quantized layer's (a ``QuantizeScheme``; custom configs
    without one count as an 8-bit per-channel ``"weight-only"`` scheme).
    """
    from keras_llmopt._src.quantization import state as state_lib
    from keras_llmopt._src.quantization.schemes import QuantizeScheme

    found = state_lib.states(model)
    if not found or any(s.activations_q or s.outputs_q or s.attention_q for _, s in found):
        return model, None
    from keras_llmopt._src.quantization.quantize import strip_quantization

    scheme = getattr(found[0][1].config, "scheme", None)
    if not isinstance(scheme, QuantizeScheme):
        scheme = QuantizeScheme(name="weight-only", activation_bits=None)
    return strip_quantization(model), scheme


def _converter(model, frozen, quantization, data, specs, is_dict, batch_size, sparse, is_qat):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    optimizations = []
    if quantization is not None or is_qat:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization in _CALIBRATED:
        if data is not None:
            converter.representative_dataset = calibration.representative_generator(
                data, specs, is_dict, batch_size
            )
        if quantization == "int8" and data is not None:
            # (A QAT model without data is left out: the converter then reads the
            # fake-quant ranges, while TFLITE_BUILTINS_INT8 would demand a dataset.)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif quantization == "int8":
            # A QAT model: the builtin op set; every op between fake-quant ranges is
            # quantized to int8 from them (the 16x8 op set would misread 8-bit ranges).
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS,
            ]
    return converter
