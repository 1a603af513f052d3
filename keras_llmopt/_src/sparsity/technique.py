"""Magnitude pruning as a registered technique: the ``prune`` recipe stage and its handlers."""

from absl import logging

from keras_llmopt._src.core import registry, targeting
from keras_llmopt._src.sparsity import inplace

FINETUNE_SCHEMA = registry.FINETUNE_SCHEMA
TARGETING_SCHEMA = registry.TARGETING_SCHEMA

PRUNE_SCHEMA = {
    "final_sparsity": ("float", 0.5, (0.0, 1.0, "open")),
    "initial_sparsity": ("float", 0.0, (0.0, 1.0, "right_open")),
    "schedule": ("choice", "polynomial", ("polynomial", "constant")),
    # Fraction of the fine-tune steps over which sparsity ramps up.
    "ramp_fraction": ("float", 0.7, (0.0, 1.0, "left_open")),
    "frequency": ("int", None, (1, None)),
    "m_by_n": ("pair", None, None),
    "block_size": ("pair", None, None),
    **TARGETING_SCHEMA,
    **FINETUNE_SCHEMA,
    # Masks are computed in training steps, so pruning needs at least one.
    "steps": ("int", 200, (1, None)),
}


def pruning_schedule(
    steps,
    final_sparsity,
    initial_sparsity=0.0,
    ramp_fraction=0.7,
    frequency=None,
    kind="polynomial",
):
    """The schedule a fine-tune of ``steps`` steps uses to reach ``final_sparsity``.

    Sparsity ramps over the first ``ramp_fraction`` of the steps, updated every
    ``frequency`` steps (default: ten updates); the last update lands inside the run,
    so the final masks have exactly ``final_sparsity``.

    Example:
        >>> pruning_schedule(100, 0.5).end_step
        70
    """
    from keras_llmopt._src.sparsity import schedules

    ramp = max(1, int(round(steps * ramp_fraction)))
    frequency = frequency or max(1, ramp // 10)
    last = max(0, steps - 1)
    end = min((ramp // frequency) * frequency, (last // frequency) * frequency)
    if kind == "constant":
        return schedules.ConstantSparsity(final_sparsity, 0, frequency=frequency)
    return schedules.PolynomialDecay(initial_sparsity, final_sparsity, 0, end, frequency=frequency)


def check_prune_stage(params, where):
    """Cross-key checks of a ``prune`` stage (``where(key)`` names the stage and key)."""
    if params["initial_sparsity"] >= params["final_sparsity"] and (
        params["schedule"] == "polynomial"
    ):
        raise ValueError(
            f"{where('initial_sparsity')}: must be below final_sparsity. "
            f"Received: initial_sparsity={params['initial_sparsity']}, "
            f"final_sparsity={params['final_sparsity']}"
        )
    if params["m_by_n"] is not None and params["m_by_n"][0] >= params["m_by_n"][1]:
        raise ValueError(
            f"{where('m_by_n')}: m must be below n. Received: m_by_n={params['m_by_n']}; "
            "accepted: e.g. [2, 4]"
        )


def run_prune_stage(model, params, run):
    """Prunes with a schedule while fine-tuning (``UpdatePruningStep``)."""
    from keras_llmopt._src.sparsity import callbacks, prune

    schedule = pruning_schedule(
        params["steps"],
        params["final_sparsity"],
        params["initial_sparsity"],
        params["ramp_fraction"],
        params["frequency"],
        params["schedule"],
    )
    pruned = prune.prune_low_magnitude(
        model,
        schedule,
        block_size=tuple(params["block_size"] or (1, 1)),
        sparsity_m_by_n=tuple(params["m_by_n"]) if params["m_by_n"] else None,
        targets=params["targets"],
        ignore=params["ignore"],
    )
    logging.info(
        "%s: fine-tuning %d steps to %.0f%% sparsity",
        run.label,
        params["steps"],
        100 * params["final_sparsity"],
    )
    run.train(pruned, params, callbacks=[callbacks.UpdatePruningStep()])
    return pruned


PRUNING = registry.register_technique(
    registry.Technique(
        name=inplace.TECHNIQUE,
        state_class=inplace.PruningState,
        restore=inplace.restore,
        stage="prune",
        stage_schema=PRUNE_SCHEMA,
        run_stage=run_prune_stage,
        check_stage=check_prune_stage,
        must_precede=("quantize",),
        **registry.report_handlers("pruning_report", targeting.TargetReport),
        description="magnitude pruning with a schedule (masks updated in the train step)",
    ),
    replace=True,
)
