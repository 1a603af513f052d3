"""The stages a recipe runs: each takes the pipeline state and returns the next one.

Stages call the public APIs (``keras_llmopt.sparsity``, ``.quantization``, ``.clustering``,
``.export``). The quantization and clustering modules are imported only when a stage
needs them, so a recipe without those stages runs where they are absent.
"""

import dataclasses
import importlib
import os
import time

import numpy as np
from absl import logging

from keras_llmopt._src.pipeline.recipe import export_stem


class StageError(RuntimeError):
    """A stage could not run (a missing module, a failed export, ...); names the stage.

    Example:
        >>> raise StageError("Recipe stage 1 (quantize): keras_llmopt.quantization ...")
    """


@dataclasses.dataclass
class PipelineState:
    """The model between stages and what the stages have produced so far.

    Attributes:
        model: The current Keras model (never the user's own object: stages copy).
        pruned: The model carries pruning masks (not yet stripped).
        clustered: The model carries clustering wrappers (not yet stripped).
        quantized: The model is quantization-aware (fake-quant ops).
        artifacts: One dict per exported artifact.
        evaluations: One dict per ``evaluate`` stage.
        timings: ``[(stage label, seconds)]``.
    """

    model: object
    pruned: bool = False
    clustered: bool = False
    quantized: bool = False
    artifacts: list = dataclasses.field(default_factory=list)
    evaluations: list = dataclasses.field(default_factory=list)
    timings: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StageContext:
    """What every stage may use: the corpus, the output folder and run settings.

    Attributes:
        corpus: A ``keras_llmopt.reference.Corpus`` (fine-tuning, calibration, checks).
        out_dir: Folder the artifacts are written to.
        sequence_length: Fixed length of exported artifacts.
        seed: Seed of the fine-tuning data order.
        verbose: Keras ``fit`` verbosity (a progress bar by default).
    """

    corpus: object
    out_dir: str
    sequence_length: int
    seed: int = 0
    verbose: object = "auto"


OPTIONAL_MODULES = {
    "quantize": ("keras_llmopt.quantization", ("quantize_model",)),
    "cluster": ("keras_llmopt.clustering", ("cluster_weights", "strip_clustering")),
}


def require_module(stage_name, label=None):
    """Imports the public module a stage needs, or raises a :class:`StageError`.

    Example:
        >>> require_module("cluster").cluster_weights
    """
    module_name, names = OPTIONAL_MODULES[stage_name]
    label = label or f"stage ({stage_name})"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise StageError(
            f"Recipe {label}: needs {module_name}, which is not available in this "
            f"installation ({error}). Remove the stage or install a keras_llmopt that has it."
        ) from None
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise StageError(
            f"Recipe {label}: {module_name} has no {missing}; this keras_llmopt cannot run it."
        )
    return module


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
    from keras_llmopt import sparsity

    ramp = max(1, int(round(steps * ramp_fraction)))
    frequency = frequency or max(1, ramp // 10)
    last = max(0, steps - 1)
    end = min((ramp // frequency) * frequency, (last // frequency) * frequency)
    if kind == "constant":
        return sparsity.ConstantSparsity(final_sparsity, 0, frequency=frequency)
    return sparsity.PolynomialDecay(initial_sparsity, final_sparsity, 0, end, frequency=frequency)


def _train(model, ctx, params, callbacks=None):
    from keras_llmopt._src.reference.training import train

    train(
        model,
        ctx.corpus,
        params["steps"],
        batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        seed=ctx.seed,
        callbacks=callbacks,
        verbose=ctx.verbose,
    )


def _windows(windows, count):
    index = np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int)
    return np.asarray(windows[index]).astype(np.int32)


def run_prune(stage, state, ctx):
    """Prunes with a schedule and fine-tunes (``UpdatePruningStep``)."""
    from keras_llmopt import sparsity

    p = stage.params
    schedule = pruning_schedule(
        p["steps"],
        p["final_sparsity"],
        p["initial_sparsity"],
        p["ramp_fraction"],
        p["frequency"],
        p["schedule"],
    )
    model = state.model
    if state.clustered:
        model = require_module("cluster", stage.label).strip_clustering(model)
        state.clustered = False
    pruned = sparsity.prune_low_magnitude(
        model,
        schedule,
        block_size=tuple(p["block_size"] or (1, 1)),
        sparsity_m_by_n=tuple(p["m_by_n"]) if p["m_by_n"] else None,
        targets=p["targets"],
        ignore=p["ignore"],
    )
    logging.info(
        "%s: fine-tuning %d steps to %.0f%% sparsity",
        stage.label,
        p["steps"],
        100 * p["final_sparsity"],
    )
    _train(pruned, ctx, p, callbacks=[sparsity.UpdatePruningStep()])
    state.model, state.pruned = pruned, True
    return state


def _strip(state, label):
    from keras_llmopt import sparsity

    model = state.model
    if state.pruned:
        model = sparsity.strip_pruning(model)
    if state.clustered:
        model = require_module("cluster", label).strip_clustering(model)
    return model


def run_quantize(stage, state, ctx):
    """Quantization-aware model (``quantize_model``), calibrated and/or fine-tuned."""
    quantization = require_module("quantize", stage.label)
    p = stage.params
    model = _strip(state, stage.label)
    state.pruned = state.clustered = False
    kwargs = {"scheme": p["scheme"]} if p["scheme"] else {}
    qat = quantization.quantize_model(model, **kwargs)
    if p["calibrate"]:
        if not hasattr(quantization, "calibrate"):
            raise StageError(f"Recipe {stage.label}: keras_llmopt.quantization has no calibrate")
        data = _windows(ctx.corpus.train, p["calibration_windows"])[:, :-1]
        logging.info("%s: calibrating (%s) on %d windows", stage.label, p["calibrate"], len(data))
        result = quantization.calibrate(qat, data, method=p["calibrate"])
        qat = result if result is not None and hasattr(result, "predict") else qat
    if p["steps"]:
        logging.info("%s: quantization-aware fine-tuning, %d steps", stage.label, p["steps"])
        _train(qat, ctx, p)
    state.model, state.quantized = qat, True
    return state


def run_cluster(stage, state, ctx):
    """k-means weight clustering (``cluster_weights``), fine-tuned."""
    clustering = require_module("cluster", stage.label)
    p = stage.params
    kwargs = {"cluster_centroids_init": p["init"]} if p["init"] else {}
    model = _strip(state, stage.label)
    state.pruned = False
    clustered = clustering.cluster_weights(model, p["number_of_clusters"], **kwargs)
    if p["steps"]:
        logging.info(
            "%s: fine-tuning %d steps with %d clusters",
            stage.label,
            p["steps"],
            p["number_of_clusters"],
        )
        _train(clustered, ctx, p)
    state.model, state.clustered = clustered, True
    return state


def run_strip(stage, state, ctx):
    """Removes pruning masks and clustering wrappers (zeros / centroids baked in)."""
    del ctx
    if not (state.pruned or state.clustered):
        logging.info("%s: nothing to strip", stage.label)
        return state
    state.model = _strip(state, stage.label)
    state.pruned = state.clustered = False
    return state


def run_evaluate(stage, state, ctx):
    """Validation bits per byte of the current model."""
    from keras_llmopt._src.reference.evaluation import evaluate

    result = evaluate(state.model, ctx.corpus, num_windows=stage.params["windows"])
    logging.info("%s: validation bpb %.4f", stage.label, result.bpb)
    state.evaluations.append({"stage": stage.index, **result.to_dict()})
    return state


def run_export(stage, state, ctx):
    """A verified artifact of the current model (stripped first if needed)."""
    from keras_llmopt import export

    p = stage.params
    model = _strip(state, stage.label) if (state.pruned or state.clustered) else state.model
    path = os.path.join(ctx.out_dir, export_stem(stage))
    windows = _windows(ctx.corpus.validation, p["verify_windows"])
    data = (windows[:, :-1], windows[:, 1:])
    quantization = None if p["quantization"] == "none" else p["quantization"]
    logging.info("%s: writing %s", stage.label, path)
    try:
        if p["format"] == "tflite":
            calibration = None
            if quantization in ("int8", "int16x8") and not state.quantized:
                calibration = _windows(ctx.corpus.train, p["calibration_windows"])[:, :-1]
            report = export.to_tflite(
                model,
                path,
                quantization=quantization,
                representative_dataset=calibration,
                sequence_length=ctx.sequence_length,
                sparse=p["sparse"],
                verify=p["verify"],
                verification_data=data,
            )
        elif p["format"] == "onnx":
            report = export.to_onnx(
                model,
                path,
                sequence_length=ctx.sequence_length,
                verify=p["verify"],
                verification_data=data,
            )
        else:
            report = export.to_saved_model(model, path, verify=p["verify"], verification_data=data)
    except (ValueError, RuntimeError) as error:
        raise StageError(f"Recipe {stage.label}: export to {path} failed: {error}") from error
    v = report.verification
    state.artifacts.append(
        {
            "stage": stage.index,
            "path": report.path,
            "format": report.format,
            "quantization": report.quantization,
            "sparse": p["sparse"],
            "size_bytes": report.size_bytes,
            "verified": v.passed if v is not None else None,
            "verification": v.to_dict() if v is not None else None,
            "notes": list(report.notes),
        }
    )
    return state


RUNNERS = {
    "prune": run_prune,
    "quantize": run_quantize,
    "cluster": run_cluster,
    "strip": run_strip,
    "evaluate": run_evaluate,
    "export": run_export,
}


def run_stage(stage, state, ctx):
    """Runs one stage and records its wall time.

    Example:
        >>> state = run_stage(recipe.stages[0], state, ctx)
    """
    start = time.time()
    state = RUNNERS[stage.name](stage, state, ctx)
    state.timings.append((stage.label, time.time() - start))
    return state
