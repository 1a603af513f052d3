"""One-shot compression as a registered technique: the ``oneshot`` recipe stage.

The weight-only grids GPTQ and AWQ leave are this technique's layer states (saved,
loaded and stripped by the core); the stage builds one config from its keys and
runs :func:`~keras_llmopt._src.llm.oneshot.oneshot` on the run's calibration windows.
"""

from absl import logging

from keras_llmopt._src.core import registry
from keras_llmopt._src.llm import configs, grid_state, oneshot, structural_technique

# Structural methods (head / ffn / depth / hidden pruning) run here too, with their own
# keys; the ``structural`` stage also offers recovery by distillation.
_STRUCTURAL_METHODS = tuple(structural_technique.configs.STRUCTURAL_CLASSES)
_STRUCTURAL_KEYS = ("fraction", "num_heads", "intermediate_dim", "num_layers", "importance")
_STRUCTURAL_KEYS += ("allocation",)

ONESHOT_SCHEMA = {
    "method": ("choice", "wanda", tuple(sorted(configs.CONFIG_CLASSES))),
    "sparsity": ("float", 0.5, (0.0, 1.0, "right_open")),
    "m_by_n": ("pair", None, None),
    "bits": ("int", 4, (4, 8)),
    "group_size": ("int", 128, (-1, None)),
    "act_order": ("bool", False, None),
    "alpha": ("float", 0.5, (0.0, 1.0)),
    "num_samples": ("int", 128, (1, None)),
    "sequence_length": ("int", None, (1, None)),
    "batch_size": ("int", 8, (1, None)),
    **{k: structural_technique.STRUCTURAL_SCHEMA[k] for k in _STRUCTURAL_KEYS},
    **registry.TARGETING_SCHEMA,
}

# The stage keys each method takes (the others are ignored for it).
_METHOD_KEYS = {
    "magnitude": ("sparsity", "m_by_n"),
    "wanda": ("sparsity", "m_by_n"),
    "sparsegpt": ("sparsity", "m_by_n"),
    "gptq": ("bits", "group_size", "act_order"),
    "awq": ("bits", "group_size"),
    "smoothquant": ("alpha",),
}


def stage_config(params):
    """The one-shot config a stage's parameters describe.

    Example:
        >>> stage_config({"method": "gptq", "bits": 8, "group_size": -1, "act_order": False,
        ...               "targets": None, "ignore": None}).describe()
        'gptq int8 per channel'
    """
    if params["method"] in _STRUCTURAL_METHODS:
        return structural_technique.stage_config(params)
    settings = {k: params[k] for k in _METHOD_KEYS[params["method"]] if k in params}
    if settings.get("m_by_n") is not None:
        settings["m_by_n"] = tuple(settings["m_by_n"])
    return configs.CONFIG_CLASSES[params["method"]](
        **settings, targets=params.get("targets"), ignore=params.get("ignore")
    )


def check_oneshot_stage(params, where):
    """Cross-key checks of a ``oneshot`` stage (the config validates its own settings)."""
    if params["method"] in _STRUCTURAL_METHODS:
        structural_technique.check_structural_stage(params, where)
        return
    stray = sorted(k for k in _STRUCTURAL_KEYS if params.get(k) is not None)
    if stray:
        raise ValueError(
            f"{where(stray[0])}: a setting of the structural methods, not of "
            f"{params['method']}. Received: { {k: params[k] for k in stray} }"
        )
    try:
        stage_config(params)
    except ValueError as error:
        raise ValueError(f"{where('method')}: {error}") from None


def run_oneshot_stage(model, params, run):
    """One-shot compression of ``model`` on the run's calibration windows."""
    if params["method"] in _STRUCTURAL_METHODS:
        return structural_technique.prune_on_run(model, params, run)
    config = stage_config(params)
    data = run.calibration_data(params["num_samples"])
    logging.info("%s: one-shot %s on %d windows", run.label, config.describe(), len(data))
    return oneshot.oneshot(model, data, config, **structural_technique.pass_args(params))


ONESHOT = registry.register_technique(
    registry.Technique(
        name=grid_state.TECHNIQUE,
        state_class=grid_state.WeightGridState,
        restore=grid_state.restore,
        stage="oneshot",
        stage_schema=ONESHOT_SCHEMA,
        run_stage=run_oneshot_stage,
        check_stage=check_oneshot_stage,
        **registry.report_handlers("oneshot_report", oneshot.OneShotReport),
        description="one-shot compression from calibration data (Wanda, SparseGPT, GPTQ, AWQ, "
        "SmoothQuant; head / FFN / depth / hidden pruning)",
    ),
    replace=True,
)
