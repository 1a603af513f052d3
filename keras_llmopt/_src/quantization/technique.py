"""Quantization-aware training as a registered technique: the ``quantize`` recipe stage."""

from absl import logging

from keras_llmopt._src.core import registry
from keras_llmopt._src.quantization import quantize
from keras_llmopt._src.quantization import state as state_lib

CALIBRATION_METHODS = ("minmax", "percentile", "mse", "entropy")

QUANTIZE_SCHEMA = {
    "scheme": ("str", None, None),
    "calibrate": ("choice", None, CALIBRATION_METHODS),
    "calibration_windows": ("int", 64, (1, None)),
    **registry.TARGETING_SCHEMA,
    **registry.FINETUNE_SCHEMA,
    "learning_rate": ("float", 1e-4, (0.0, None, "open")),
}


def check_quantize_stage(params, where):
    """Cross-key checks of a ``quantize`` stage."""
    if params["steps"] == 0 and params["calibrate"] is None:
        raise ValueError(
            f"{where('steps')}: with steps=0 (no quantization-aware training) the ranges must "
            "come from calibration. Received: steps=0, calibrate=None; accepted: steps >= 1, "
            f"or calibrate in {list(CALIBRATION_METHODS)}"
        )
    if params["scheme"] is not None:
        from keras_llmopt._src.quantization import schemes

        if params["scheme"] not in schemes.SCHEMES:
            raise ValueError(
                f"{where('scheme')}: unknown value. Received: scheme={params['scheme']!r}; "
                f"accepted: {sorted(schemes.SCHEMES)}"
            )


def run_quantize_stage(model, params, run):
    """Quantization-aware model (``quantize_model``), calibrated and/or fine-tuned."""
    from keras_llmopt._src.quantization import calibrate

    kwargs = {"scheme": params["scheme"]} if params["scheme"] else {}
    qat = quantize.quantize_model(
        model, targets=params["targets"], ignore=params["ignore"], **kwargs
    )
    if params["calibrate"]:
        data = run.calibration_data(params["calibration_windows"])
        logging.info(
            "%s: calibrating (%s) on %d windows", run.label, params["calibrate"], len(data)
        )
        calibrate.calibrate(qat, data, method=params["calibrate"])
    if params["steps"]:
        logging.info("%s: quantization-aware fine-tuning, %d steps", run.label, params["steps"])
        run.train(qat, params)
    return qat


QUANTIZATION = registry.register_technique(
    registry.Technique(
        name=state_lib.TECHNIQUE,
        state_class=state_lib.QuantizeState,
        restore=state_lib.restore,
        stage="quantize",
        stage_schema=QUANTIZE_SCHEMA,
        run_stage=run_quantize_stage,
        check_stage=check_quantize_stage,
        export_modes=("int8", "int16x8"),
        **registry.report_handlers("quantize_report", quantize.QuantizeReport),
        description="quantization-aware training / calibrated ranges (int8, 16x8, int4)",
    ),
    replace=True,
)
