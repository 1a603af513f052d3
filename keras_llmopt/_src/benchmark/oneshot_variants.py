"""The benchmark's one-shot rows: ``keras_llmopt.llm`` from 128 calibration windows, no training.

Every row compresses the trained reference model once (``llm.oneshot``, built once per
run and shared by its exports) and ships a verified ``.tflite``: the sparse methods as
fp32 files (their zeros are what is measured), GPTQ / AWQ as int4 files holding the
grid the method chose (blocks of ``group_size`` input rows with one scale each: the
methods' groups), and SmoothQuant as a full-integer int8 file calibrated with
``quantization.calibrate``.
Each row's ``calibration_seconds`` is the one-shot pass (and the range calibration).
The anchors beside them: round-to-nearest int4 from the AI Edge Quantizer at the same
granularity (``aeq_rtn_int4``), and the ranges calibrated without SmoothQuant (``klo_ptq_int8``).
"""

import time

from absl import logging

from keras_llmopt._src.benchmark.context import _tflite

# Training windows every one-shot row (and the Keras-native GPTQ / AWQ anchors) uses.
CALIBRATION_WINDOWS = 128
# Group size of the int4 rows (GPTQ / AWQ groups, int4 file blocks): the largest of these
# dividing the model's widths (128 on ``small``).
GROUP_SIZES = (128, 64, 32)


def group_size(ctx):
    """The int4 rows' group size for ``ctx``'s model.

    Example:
        >>> group_size(ctx)  # the small GPT: d_model 256, mlp_dim 1024
        128
    """
    widths = (ctx.config.d_model, ctx.config.mlp_dim)
    return next(g for g in GROUP_SIZES if all(w % g == 0 for w in widths))


def calibration_windows(ctx):
    """The first ``CALIBRATION_WINDOWS`` training windows, cut to the model's length.

    Example:
        >>> calibration_windows(ctx).shape
        (128, 128)
    """
    return ctx.corpus.train[:CALIBRATION_WINDOWS, :-1].astype("int32")


def _compressed(ctx, key, recipe):
    """``llm.oneshot(ctx.model, ..., recipe)``, built once per run (its report times it)."""

    def build():
        from keras_llmopt._src.llm import oneshot

        logging.info("benchmark: one-shot %s on %d windows", key, CALIBRATION_WINDOWS)
        return oneshot.oneshot(
            ctx.model, calibration_windows(ctx), recipe, num_samples=CALIBRATION_WINDOWS
        )

    return ctx.shared(f"oneshot_{key}", build)


def _notes(model):
    report = model.oneshot_report
    return (
        f"one-shot {' -> '.join(report.recipe)} on {CALIBRATION_WINDOWS} training windows "
        f"in {report.seconds:.1f} s ({report.steps} steps); no training",
    )


def _oneshot_row(key, doc, *configs, int4=False):
    """A row: ``configs`` (``(method, settings)``) in one pass, then a verified file."""

    def build(ctx):
        from keras_llmopt._src.llm import configs as configs_lib

        recipe = []
        for method, settings in configs:
            if method in ("gptq", "awq"):  # the grid methods: 4 bits in the row's groups
                settings = {"bits": 4, "group_size": group_size(ctx), **settings}
            recipe.append(configs_lib.CONFIG_CLASSES[method](**settings))
        model = _compressed(ctx, key, recipe)
        export = {"quantization": "int4", "block_size": group_size(ctx)} if int4 else {}
        built = _tflite(ctx, model, f"klo_{key}", **export)
        built.notes = (*_notes(model), *built.notes)
        built.calibration_seconds = model.oneshot_report.seconds
        return built

    build.__doc__ = doc
    return build


def _ranges_calibrated(ctx, model, name, seconds=0.0, notes=()):
    """Full-integer int8 of ``model``: fake-quant wrappers, ranges from data, no training."""
    from keras_llmopt._src.quantization import calibrate, quantize

    start = time.perf_counter()
    quantized = quantize.quantize_model(model)
    calibrate.calibrate(quantized, calibration_windows(ctx))
    seconds += time.perf_counter() - start
    built = _tflite(ctx, quantized, name, quantization="int8")
    built.notes = (*notes, "quantize_model + calibrate (min/max ranges), no training")
    built.calibration_seconds = seconds
    return built


def klo_smoothquant_int8_ptq(ctx):
    """SmoothQuant (alpha 0.5), calibrated ranges, full-integer int8 ``.tflite``; no training.

    Example:
        >>> built = klo_smoothquant_int8_ptq(ctx)
    """
    from keras_llmopt._src.llm import configs

    model = _compressed(ctx, "smoothquant", [configs.SmoothQuant(0.5)])
    seconds = model.oneshot_report.seconds
    return _ranges_calibrated(ctx, model, "klo_smoothquant_int8_ptq", seconds, _notes(model))


def klo_ptq_int8(ctx):
    """The control of ``klo_smoothquant_int8_ptq``: the same calibration, no SmoothQuant.

    Example:
        >>> built = klo_ptq_int8(ctx)
    """
    return _ranges_calibrated(ctx, ctx.model, "klo_ptq_int8")


def aeq_rtn_int4(ctx):
    """Round-to-nearest int4 in blocks of ``group_size`` (AI Edge Quantizer, via ``to_tflite``).

    The same file layout as the GPTQ / AWQ rows, with the quantizer's own rounding.

    Example:
        >>> built = aeq_rtn_int4(ctx)
    """
    size = group_size(ctx)
    built = _tflite(ctx, ctx.model, "aeq_rtn_int4", quantization="int4", block_size=size)
    note = f"AI Edge Quantizer dynamic int4, blocks of {size}, on the fp32 model"
    built.notes = (note, *built.notes)
    return built


VARIANTS = {
    "klo_magnitude50": _oneshot_row(
        "magnitude50", "One-shot magnitude 50 %, fp32.", ("magnitude", {"sparsity": 0.5})
    ),
    "klo_wanda50": _oneshot_row("wanda50", "Wanda 50 %, fp32.", ("wanda", {"sparsity": 0.5})),
    "klo_sparsegpt50": _oneshot_row(
        "sparsegpt50", "SparseGPT 50 %, fp32.", ("sparsegpt", {"sparsity": 0.5})
    ),
    "klo_magnitude_2of4": _oneshot_row(
        "magnitude_2of4", "One-shot magnitude 2:4, fp32.", ("magnitude", {"m_by_n": (2, 4)})
    ),
    "klo_wanda_2of4": _oneshot_row("wanda_2of4", "Wanda 2:4, fp32.", ("wanda", {"m_by_n": (2, 4)})),
    "klo_sparsegpt_2of4": _oneshot_row(
        "sparsegpt_2of4", "SparseGPT 2:4, fp32.", ("sparsegpt", {"m_by_n": (2, 4)})
    ),
    "klo_gptq_int4": _oneshot_row(
        "gptq_int4",
        "GPTQ int4 (groups of 128 on small), int4 file on its grid.",
        ("gptq", {}),
        int4=True,
    ),
    "klo_awq_int4": _oneshot_row(
        "awq_int4",
        "AWQ int4 (groups of 128 on small), int4 file on its grid.",
        ("awq", {}),
        int4=True,
    ),
    "klo_sparsegpt50_gptq_int4": _oneshot_row(
        "sparsegpt50_gptq_int4",
        "SparseGPT 50 % then GPTQ int4 in one pass, int4 file.",
        ("sparsegpt", {"sparsity": 0.5}),
        ("gptq", {}),
        int4=True,
    ),
    "klo_smoothquant_int8_ptq": klo_smoothquant_int8_ptq,
    "klo_ptq_int8": klo_ptq_int8,
    "aeq_rtn_int4": aeq_rtn_int4,
}
