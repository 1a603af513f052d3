"""``to_tflite``: a Keras model to a verified ``.tflite`` in any converter mode."""

import dataclasses

import numpy as np
from absl import logging

from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.export import (
    broadcast_constants,
    calibration,
    common,
    compact,
    converter,
    files,
    float_islands,
    float_ops,
    int4,
    report,
    runtime,
    signature_def,
    sparse_advice,
    tflite_modes,
    weight_grids,
)
from keras_llmopt._src.export.tflite_modes import QUANTIZATION_MODES  # noqa: F401
from keras_llmopt._src.export.verification import resolve_tolerance


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
    allow_float_ops=False,
    integer_only=False,
):
    """Converts a Keras model to a ``.tflite`` file and proves it against the model.

    The model is traced with a fixed input signature (``batch_size``,
    ``sequence_length``), its variables are frozen into the graph (so the weights are
    in the file) and converted. The artifact is written to a temporary file next to
    ``path``, run back in LiteRT and compared with Keras; only then is it moved to
    ``path``. On any failure nothing is left at ``path`` and a file already there is
    kept. The file has one signature, ``serving_default``, whose inputs carry the
    model's input names (``tokens``, or ``token_ids`` and ``padding_mask``) and whose
    one output is ``output``, in every mode.

    Modes (``quantization``):
        * ``None``: float32.
        * ``"float16"``: float16 weights, float compute.
        * ``"dynamic_int8"``: int8 weights, activations quantized on the fly.
        * ``"int8"``: full-integer: every FULLY_CONNECTED and BATCH_MATMUL reads int8
          inputs, or the export is refused (naming each float op and its layer, nothing
          written) unless ``allow_float_ops=True``. From a QAT model (fake-quant
          ops in the graph) it uses the learned ranges; from a float model it
          calibrates on
          ``representative_dataset``. Token inputs stay int32, logits float32. The
          converter's post-training int8 can wreck a transformer: verification
          (top-1 agreement, bits per byte) catches it and raises. The graph is
          rewritten first as for ``"int16x8"`` (the attention-mask fill, see
          ``graph_rewrite.rewrite_for_integer``).
        * ``"int16x8"``: int16 activations, int8 weights, calibrated. The graph is
          rewritten first (``graph_rewrite.rewrite_for_integer``) because the converter's
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
            own, e.g. the reference GPT's learned positions); at most the model's
            maximum. Required for models with dynamic length and no declared maximum
            (e.g. KerasHub Llama).
        batch_size: Fixed batch size of the artifact.
        sparse: Store pruned (mostly zero) weights in TFLite's sparse encoding, if
            smaller than the dense one (``sparse_advice``; the notes say which and why).
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
            internal tensor names shortened; inputs, outputs and signatures keep their
            names and the outputs are bit-identical. ``summary["compaction"]`` says
            what it saved. Pass ``False`` to keep the names for debugging.
        allow_float_ops: ``"int8"``: accept a file in which some matmuls still read
            float inputs; they are listed in ``summary["float_matmuls"]`` and the
            notes. Default: refuse such a file. ``"int16x8"`` lists them without
            refusing (LiteRT has no int16 GELU: a Dense with a GELU activation computes
            its matmul in float there).
        integer_only: ``"int8"``: keep every op integer. Default: the int8 SOFTMAX and
            GELU ops, which LiteRT's XNNPACK delegate cannot run, compute in float32
            between a DEQUANTIZE and a QUANTIZE so XNNPACK runs them (faster on CPU;
            ``float_islands``); the matmuls are int8 either way.

    Returns:
        An ``ExportReport``.

    Example:
        >>> from keras_llmopt import export, reference
        >>> model = reference.build_gpt("tiny")
        >>> r = export.to_tflite(model, "gpt.tflite", quantization="dynamic_int8")
        >>> r.size_bytes < 4 * model.count_params(), r.verification.passed
        (True, True)
    """
    common.check_model(model, "to_tflite")
    path = files.check_path(path)
    mode = tflite_modes.get_mode(quantization)
    common.check_positive_int("sequence_length", sequence_length)
    common.check_positive_int("batch_size", batch_size, allow_none=False)
    common.check_positive_int("num_threads", num_threads)
    check_conversion_arguments(mode, representative_dataset, sparse, block_size)
    common.check_bool("verify", verify)
    common.check_bool("compact_file", compact_file)
    common.check_bool("allow_float_ops", allow_float_ops)
    common.check_bool("integer_only", integer_only)
    if tolerance is not None:
        resolve_tolerance(mode.tolerance, tolerance)

    notes = []
    model, grids, block_size = grids_of(model, mode, block_size, notes)
    model, weight_only = _dequantized_if_weight_only(model)
    if weight_only:
        notes.append(
            f"weight-only quantization-aware model ({weight_only.name}): exported its "
            "dequantized weights (strip_quantization), stored at this mode's precision"
        )
        if mode.int4_weights and block_size is None:
            block_size = weight_only.weight_group_size
    inputs = describe_inputs(model, sequence_length, batch_size).require_fixed_length("to_tflite")
    logging.info(
        "to_tflite: tracing %s with inputs %s", model.name, [s.shape for s in inputs.specs]
    )
    traced = converter.trace(
        [signature_def.model_signature(model, inputs)], integer_rewrite=mode.integer_rewrite
    )
    if mode.int4_weights and traced.is_qat:
        raise ValueError(
            "quantization='int4' stores weights only and keeps activations float, but this "
            "model is quantization-aware with activation ranges. Export it with 'int8' / "
            "'int16x8', or quantize with a weight-only scheme ('4bit_weights*'). Received: "
            f"scheme={getattr(getattr(model, 'quantize_report', None), 'scheme', None)!r}"
        )
    if mode.calibrated and representative_dataset is None and not traced.is_qat:
        raise ValueError(
            f"quantization={quantization!r} needs calibration: pass representative_dataset="
            "(token-id windows, e.g. corpus.train[:64]) or export a quantization-aware "
            "trained model. Received: representative_dataset=None on a float model"
        )
    data = None
    if representative_dataset is not None:
        data = calibration.representative_generator(
            representative_dataset, inputs.specs, inputs.is_dict, batch_size
        )
    float_matmuls = []
    content, compaction = build_flatbuffer(
        traced,
        mode,
        sparse,
        data,
        block_size,
        compact_file,
        notes,
        "to_tflite",
        allow_float_ops=allow_float_ops,
        float_matmuls=float_matmuls,
        integer_only=integer_only,
        grids=grids,
    )

    def check(temp):
        summary = inspect_staged(temp, compaction, notes)
        if mode.name in float_ops.REPORTED_MODES:
            summary["float_matmuls"] = [str(f) for f in float_matmuls]
        verification = None
        if verify:
            verification = common.verify_staged(
                temp,
                path,
                model,
                inputs,
                verification_data,
                tolerance,
                mode.tolerance,
                f"TFLite export (quantization={quantization!r})",
                num_threads,
            )
        return summary, verification

    result = publish_flatbuffer(
        path, content, check, quantization, int(model.count_params()), notes
    )
    logging.info("to_tflite: wrote %s (%d bytes)", path, result.size_bytes)
    return result


def check_conversion_arguments(mode, representative_dataset, sparse, block_size):
    """Checks the conversion arguments every TFLite exporter shares.

    Example:
        >>> check_conversion_arguments(tflite_modes.MODES["int4"], None, False, 32)
    """
    common.check_bool("sparse", sparse)
    if representative_dataset is not None and not mode.calibrated:
        raise ValueError(
            "`representative_dataset` is only used by quantization='int8' or 'int16x8'. "
            f"Received: quantization={mode.name!r} with a representative_dataset"
        )
    int4.check_block_size(block_size)
    if sparse and mode.int4_weights:
        raise ValueError(
            "quantization='int4' packs weights two to a byte and cannot also store them "
            "sparsely. Received: sparse=True with quantization='int4'"
        )
    if block_size is not None and not mode.int4_weights:
        raise ValueError(
            "`block_size` is only used by quantization='int4'. "
            f"Received: block_size={block_size!r} with quantization={mode.name!r}"
        )


def build_flatbuffer(
    traced,
    mode,
    sparse,
    data,
    block_size,
    compact_file,
    notes,
    what,
    allow_float_ops=False,
    float_matmuls=None,
    integer_only=False,
    grids=(),
):
    """Converts traced signatures in ``mode``, then int4 and compaction; appends notes.

    ``grids`` (``weight_grids.WeightGrid``: 4-bit in ``"int4"``, 8-bit in
    ``"dynamic_int8"``, refused in other modes) are written over the quantized weights
    they match (``weight_grids.keep_grids``) and checked in the final file.

    In a full-integer mode the converted ops are checked first
    (``float_ops.check_integer_matmuls``): a float matmul raises unless
    ``allow_float_ops``; the ones accepted are appended to ``float_matmuls``. In
    ``"int8"``, unless ``integer_only``, int8 SOFTMAX / GELU then run in float32
    (``float_islands.run_in_float``).

    Returns:
        ``(content, compaction)``: the flatbuffer's bytes and the compaction statistics
        (``None`` when ``compact_file`` is off).

    Example:
        >>> from keras_llmopt._src.export.signature_def import Signature
        >>> s = Signature("twice", lambda x: {"y": 2.0 * x}, [("x", (2,), "float32")],
        ...               ["y"], lambda x: {"y": 2.0 * x})
        >>> notes = []
        >>> content, stats = build_flatbuffer(converter.trace([s]), tflite_modes.MODES[None],
        ...                                   False, None, None, True, notes, "example")
        >>> content[4:8], "reason" in stats
        (b'TFL3', True)
    """
    if traced.rewritten:
        notes.append(
            f"{mode.name}: rewrote {traced.rewritten} graph nodes (token-id wrap, "
            "SquaredDifference, attention-mask fill)"
        )
    if traced.is_qat:
        notes.append("quantization ranges learned by QAT (fake-quant ops) are used")
    grids = tuple(grids)
    weight_grids.check_mode(grids, mode.name)
    if grids:
        traced = dataclasses.replace(traced, keep_matmul_weights=True)
    logging.info("%s: converting (quantization=%s, sparse=%s)", what, mode.name, sparse)
    content = sparse_advice.convert(traced, mode, sparse, data, what, notes)
    if grids and not mode.int4_weights:  # before compaction, which shares equal vectors
        content = weight_grids.keep_grids(content, grids)
    content, saved = broadcast_constants.shrink_select_conditions(content)
    if saved:
        notes.append(f"constant SELECT_V2 conditions stored once per repeated axis (-{saved} B)")
    found = float_ops.check_integer_matmuls(content, mode.name, allow_float_ops, what)
    if found:
        reason = "allow_float_ops=True" if allow_float_ops else "no int16 kernel"
        notes.append(
            f"{reason}: {len(found)} matmul op(s) run in float: " + "; ".join(str(f) for f in found)
        )
        if float_matmuls is not None:
            float_matmuls.extend(found)
    if mode.name == "int8" and not integer_only:
        content, islands = float_islands.run_in_float(content)
        if islands:
            notes.append(
                f"{islands} int8 {'/'.join(float_islands.FLOAT_ISLAND_OPS)} op(s) compute in "
                "float32 between DEQUANTIZE and QUANTIZE, so XNNPACK runs them "
                "(integer_only=True keeps them integer)"
            )
    if mode.int4_weights:
        if compact_file:
            # The quantizer writes its weights after the flatbuffer, which compaction
            # cannot rewrite: names are shortened before, while it still can.
            content, _ = compact.compact_tflite(content)
        content = int4.quantize_weights_int4(content, block_size, grids, notes)
        granularity = "per output channel" if block_size is None else f"blocks of {block_size}"
        notes.append(f"int4 weights ({granularity}) by the AI Edge Quantizer")
    compaction = None
    if compact_file:
        content, compaction = compact.compact_tflite(content)
        if compaction["reason"]:
            notes.append(f"flatbuffer not compacted: {compaction['reason']}")
    if grids:
        weight_grids.check_grids_kept(content, grids)
        notes.append(f"{len(grids)} weight grid(s) kept exactly as given")
    return content, compaction


def publish_flatbuffer(path, content, check, quantization, num_parameters, notes):
    """Writes a verified flatbuffer into place and returns its ``ExportReport``.

    ``content`` is staged next to ``path``; ``check(temp) -> (summary, verification)``
    runs on it and whatever it raises leaves ``path`` as it was.

    Example:
        >>> report = publish_flatbuffer("x.tflite", b"TFL3", lambda t: ({}, None), None, 0, [])
        >>> report.size_bytes, report.format
        (4, 'tflite')
    """
    summary, verification = files.publish(path, files.bytes_writer(content), check)
    return report.ExportReport(
        path=path,
        format="tflite",
        quantization=quantization,
        size_bytes=report.artifact_size(path),
        num_parameters=num_parameters,
        summary=summary,
        verification=verification,
        notes=tuple(notes),
    )


def inspect_staged(temp, compaction, notes):
    """The summary of a staged ``.tflite`` (ops, dtypes, XNNPACK); appends notes.

    Example:
        >>> from keras_llmopt import export, reference
        >>> _ = export.to_tflite(reference.build_gpt("tiny"), "gpt.tflite", sequence_length=8)
        >>> inspect_staged("gpt.tflite", None, [])["signatures"]["serving_default"]
        {'inputs': ['tokens'], 'outputs': ['output']}
    """
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
    return summary


def grids_of(model, mode, block_size, notes):
    """``(plain model, [WeightGrid], block_size)`` for a model with one-shot weight grids.

    GPTQ / AWQ layers (``llm`` weight-grid states) are baked into plain weights; in the
    mode of their width (``"int4"``: 4 bits, ``"dynamic_int8"``: 8 bits) the file then
    stores their exact codes and scales, in their groups unless ``block_size`` is given.

    Example:
        >>> from keras_llmopt import reference
        >>> plain, grids, size = grids_of(reference.build_gpt("tiny"), tflite_modes.MODES["int4"],
        ...                               None, [])
        >>> grids, size
        ((), None)
    """
    from keras_llmopt._src.core import strip
    from keras_llmopt._src.llm import grid_state

    states = grid_state.grid_states(model)
    if not states:
        return model, (), block_size
    bits = {state.bits for _, state in states}
    keep = weight_grids.MODE_BITS.get(mode.name)
    grids = ()
    if keep is not None and bits == {keep}:
        grids = tuple(
            weight_grids.WeightGrid(
                path, state.codes(), np.asarray(state.scales), state.bits, state.group_size
            )
            for path, state in states
        )
        if mode.int4_weights and block_size is None:
            block_size = _one_block_size(grids)
        grouped = [grid for grid in grids if grid.group_size != -1]
        if not mode.int4_weights and grouped:
            raise ValueError(
                f"quantization={mode.name!r} stores one scale per output row, but "
                f"{grouped[0]!r} has groups. Quantize with group_size=-1 for this mode."
            )
        notes.append(f"{len(grids)} one-shot weight grid(s) stored as chosen")
    elif keep is not None:
        notes.append(
            f"one-shot grids of {sorted(bits)} bits are re-rounded by quantization="
            f"{mode.name!r} (it stores {keep}-bit weights)"
        )
    return strip.strip_techniques(model, [grid_state.TECHNIQUE], "to_tflite"), grids, block_size


def _one_block_size(grids):
    """The int4 block size storing every grid (``None``: per channel), or a clear error.

    A grid of one group per row (``group_size=-1``, e.g. GPTQ's group wider than the
    layer) is stored by a block of exactly its input width too.
    """
    grouped = {grid.group_size for grid in grids if grid.group_size != -1}
    if not grouped:
        return None
    size = min(grouped)
    odd = [
        g
        for g in grids
        if g.group_size not in (-1, size) or g.group_size == -1 and g.codes.shape[1] != size
    ]
    if odd:
        raise ValueError(
            f"One int4 file stores one block size, but the one-shot grids mix {size}-column "
            f"groups with {odd[0]!r}. Re-run the quantizer with one `group_size` that "
            "divides every layer's inputs (or -1), or pass `block_size=` to re-round them."
        )
    return size


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
