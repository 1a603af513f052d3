"""Structural pruning as a registered technique: the ``structural`` recipe stage.

The stage builds one structural config from its keys, prunes the model on the run's
calibration windows, and, with ``recover_steps``, distills the pruned model from the
model the stage received (``llm.recover``, through the run's ``distill``) on the run's
training windows.
"""

from absl import logging

from keras_llmopt._src.core import registry
from keras_llmopt._src.llm import structural
from keras_llmopt._src.llm import structural_configs as configs

_IMPORTANCE = tuple(dict.fromkeys(configs.HEAD_IMPORTANCE + configs.DEPTH_IMPORTANCE))

STRUCTURAL_SCHEMA = {
    "method": ("choice", "ffn_pruning", tuple(sorted(configs.STRUCTURAL_CLASSES))),
    "fraction": ("float", None, (0.0, 1.0, "open")),
    "num_heads": ("int", None, (1, None)),
    "intermediate_dim": ("int", None, (1, None)),
    "num_layers": ("int", None, (1, None)),
    "importance": ("choice", None, _IMPORTANCE),
    "allocation": ("choice", None, configs.ALLOCATIONS),
    "num_samples": ("int", 128, (1, None)),
    "sequence_length": ("int", None, (1, None)),
    "batch_size": ("int", 8, (1, None)),
    "recover_steps": ("int", 0, (0, None)),
    "recover_batch_size": ("int", 16, (1, None)),
    "recover_learning_rate": ("float", 3e-4, (0.0, None, "left_open")),
    "temperature": ("float", 2.0, (0.0, None, "left_open")),
    "alpha": ("float", 0.1, (0.0, 1.0)),
    **registry.TARGETING_SCHEMA,
}

_METHOD_KEYS = {
    "head_pruning": ("fraction", "num_heads", "importance", "allocation"),
    "ffn_pruning": ("fraction", "intermediate_dim", "importance", "allocation"),
    "depth_pruning": ("num_layers", "importance"),
    "hidden_pruning": ("fraction", "importance"),
}


def stage_config(params):
    """The structural config a stage's parameters describe (unset keys: the config's defaults).

    Example:
        >>> stage_config({"method": "depth_pruning", "num_layers": 1}).describe()
        'depth_pruning 1 block(s) by block_influence'
    """
    method = params["method"]
    settings = {k: params[k] for k in _METHOD_KEYS[method] if params.get(k) is not None}
    targeting = {k: params.get(k) for k in ("targets", "ignore")}
    return configs.STRUCTURAL_CLASSES[method](**settings, **targeting)


def check_structural_stage(params, where):
    """Cross-key checks of a ``structural`` stage (the config validates its own settings)."""
    method = params["method"]
    others = {k for keys in _METHOD_KEYS.values() for k in keys} - set(_METHOD_KEYS[method])
    stray = sorted(k for k in others if params.get(k) is not None)
    if stray:
        raise ValueError(
            f"{where(stray[0])}: not a setting of {method}. Received: "
            f"{ {k: params[k] for k in stray} }; accepted for {method}: "
            f"{list(_METHOD_KEYS[method])}"
        )
    try:
        stage_config(params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where('method')}: {error}") from None


def prune_on_run(model, params, run):
    """``model`` pruned by the stage's config on the run's calibration windows (no recovery).

    The ``oneshot`` stage runs its structural methods through this too.
    """
    config = stage_config(params)
    data = run.calibration_data(params["num_samples"])
    logging.info("%s: %s on %d windows", run.label, config.describe(), len(data))
    return structural.prune_structures(model, data, config, **pass_args(params))


def pass_args(params):
    """The calibration-pass keywords of a stage's parameters.

    Example:
        >>> pass_args({"num_samples": 8, "sequence_length": None, "batch_size": 4, "x": 1})
        {'num_samples': 8, 'sequence_length': None, 'batch_size': 4}
    """
    return {k: params[k] for k in ("num_samples", "sequence_length", "batch_size")}


def run_structural_stage(model, params, run):
    """Prunes ``model``'s structures on the run's calibration windows, then recovers."""
    pruned = prune_on_run(model, params, run)
    if params["recover_steps"]:
        logging.info("%s: distilling %d steps", run.label, params["recover_steps"])
        run.distill(
            pruned,
            model,
            {
                "steps": params["recover_steps"],
                "batch_size": params["recover_batch_size"],
                "learning_rate": params["recover_learning_rate"],
                "temperature": params["temperature"],
                "alpha": params["alpha"],
            },
        )
    return pruned


STRUCTURAL = registry.register_technique(
    registry.Technique(
        name="structural",
        stage="structural",
        stage_schema=STRUCTURAL_SCHEMA,
        run_stage=run_structural_stage,
        check_stage=check_structural_stage,
        **registry.report_handlers("structural_report", structural.StructuralReport),
        description="structural pruning: whole heads, MLP channels or blocks removed, the "
        "model rebuilt smaller, optionally distilled from the original",
    ),
    replace=True,
)
