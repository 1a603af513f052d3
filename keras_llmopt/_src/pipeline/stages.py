"""The stages a recipe runs: each takes the pipeline state and returns the next one.

Technique stages (``prune``, ``quantize``, ``cluster``, and any registered technique's)
are run by their technique's ``run_stage`` handler from the registry; this module
names none of them. It runs the pipeline's own stages (``strip``, ``evaluate``,
``export``) and gives technique handlers a :class:`StageRun`: fine-tuning on the
corpus and calibration windows. Every stage feeds the model as the shared core's input
description (``core.model_inputs``) says it takes its inputs: an array of token ids,
or a dict of token ids and all-ones masks (KerasHub ``token_ids`` / ``padding_mask``).
"""

import dataclasses
import os
import time

import numpy as np
from absl import logging

from keras_llmopt._src.core import layer_state, registry
from keras_llmopt._src.core import strip as core_strip
from keras_llmopt._src.pipeline.recipe import export_stem


class StageError(RuntimeError):
    """A stage could not run (a failed export, a technique error, ...); names the stage.

    Example:
        >>> raise StageError("Recipe stage 1 (export): export to out/x.tflite failed: ...")
    """


@dataclasses.dataclass
class PipelineState:
    """The model between stages and what the stages have produced so far.

    Attributes:
        model: The current Keras model (never the user's own object: stages copy).
        artifacts: One dict per exported artifact.
        evaluations: One dict per ``evaluate`` stage.
        timings: ``[(stage label, seconds)]``.
    """

    model: object
    artifacts: list = dataclasses.field(default_factory=list)
    evaluations: list = dataclasses.field(default_factory=list)
    timings: list = dataclasses.field(default_factory=list)

    @property
    def techniques(self):
        """Names of the techniques whose states the current model carries."""
        return sorted({state.technique for _, state in layer_state.find_states(self.model)})


@dataclasses.dataclass
class StageContext:
    """What every stage may use: the corpus, the output folder and run settings.

    Attributes:
        corpus: A ``keras_llmopt.reference.Corpus`` (fine-tuning, calibration, checks).
        out_dir: Folder the artifacts are written to.
        sequence_length: The length every stage runs at (and of exported artifacts).
        seed: Seed of the fine-tuning data order.
        verbose: Keras ``fit`` verbosity (a progress bar by default).
        inputs: The model's ``ModelInputs`` at ``sequence_length`` (``None``: one token
            input), from :func:`~keras_llmopt._src.core.model_inputs.describe_inputs`.
    """

    corpus: object
    out_dir: str
    sequence_length: int
    seed: int = 0
    verbose: object = "auto"
    inputs: object = None

    def feeds(self, tokens):
        """Token ids ``(B, T)`` as the model takes them (see :func:`token_feeds`)."""
        return token_feeds(self.inputs, tokens)


@dataclasses.dataclass
class StageRun:
    """What a technique's ``run_stage`` handler gets besides the model and its params.

    Attributes:
        label: ``"stage <i> (<name>)"`` for messages.
        context: The run's :class:`StageContext`.

    Example:
        >>> run = StageRun("stage 0 (prune)", ctx)
        >>> run.train(model, {"steps": 10, "batch_size": 8, "learning_rate": 1e-3})
    """

    label: str
    context: StageContext

    def train(self, model, params, callbacks=None):
        """Fine-tunes ``model`` on the corpus (``steps``, ``batch_size``, ``learning_rate``).

        Next-token cross-entropy with the reference AdamW schedule; a dict-input model
        gets its token ids and masks, and keeps its KerasHub sampler.
        """
        from keras_llmopt._src.reference import training

        ctx = self.context
        if _takes_token_array(ctx.inputs):
            training.train(
                model,
                ctx.corpus,
                params["steps"],
                batch_size=params["batch_size"],
                learning_rate=params["learning_rate"],
                seed=ctx.seed,
                callbacks=callbacks,
                verbose=ctx.verbose,
            )
            return
        sampler = getattr(model, "sampler", None)
        model.compile(
            optimizer=training.make_optimizer(params["steps"], params["learning_rate"]),
            loss=training.lm_loss(),
        )
        if sampler is not None:
            model.sampler = sampler  # a CausalLM's compile() resets it
        x, y = training.make_batches(
            ctx.corpus.train, params["batch_size"], params["steps"], seed=ctx.seed
        )
        model.fit(
            ctx.feeds(x),
            y,
            batch_size=params["batch_size"],
            epochs=1,
            shuffle=False,
            callbacks=callbacks,
            verbose=ctx.verbose,
        )

    def distill(self, student, teacher, params):
        """Distills ``student`` from ``teacher`` on the corpus, in place (``llm.recover``).

        ``params``: ``steps``, ``batch_size``, ``learning_rate``, ``temperature``, ``alpha``.
        """
        from keras_llmopt._src.ensemble import recovery
        from keras_llmopt._src.reference import training

        ctx = self.context
        x, y = training.make_batches(
            ctx.corpus.train, params["batch_size"], params["steps"], seed=ctx.seed
        )
        recovery.recover(
            student,
            teacher,
            (ctx.feeds(x), y),
            params["steps"],
            batch_size=params["batch_size"],
            learning_rate=params["learning_rate"],
            temperature=params["temperature"],
            alpha=params["alpha"],
            seed=ctx.seed,
            verbose=ctx.verbose,
        )

    def calibration_data(self, count):
        """``count`` training windows as the model takes them (token ids ``(count, T)``)."""
        return self.context.feeds(_windows(self.context.corpus.train, count)[:, :-1])


def _takes_token_array(inputs):
    return inputs is None or (not inputs.is_dict and len(inputs.specs) == 1)


def check_token_inputs(inputs, model_name):
    """Raises unless the pipeline can feed every input: token ids and masks only.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.core.model_inputs import describe_inputs
        >>> check_token_inputs(describe_inputs(reference.build_gpt("tiny")), "gpt")
    """
    if inputs.token_input is None or any(
        not (spec.is_tokens or spec.is_mask) for spec in inputs.specs
    ):
        found = [f"{spec.name} ({spec.dtype}, {spec.role})" for spec in inputs.specs]
        raise ValueError(
            f"run_recipe: model {model_name!r} takes inputs the pipeline cannot feed. "
            f"Received: inputs {found}; accepted: one integer token-id input (batch, T), "
            "optionally with padding/attention masks (e.g. KerasHub token_ids and "
            "padding_mask)"
        )


def token_feeds(inputs, tokens):
    """Token ids ``(B, T)`` arranged as a model takes them: masks are all ones.

    Args:
        inputs: The model's ``ModelInputs`` (``None``: the tokens as they are).
        tokens: Integer array ``(B, T)``.

    Returns:
        The array (one token input) or a dict / list of arrays, one per input.

    Example:
        >>> from keras_llmopt._src.core.model_inputs import InputSpec, ModelInputs
        >>> inputs = ModelInputs((InputSpec("token_ids", (None, 4), "int32", "tokens"),
        ...                       InputSpec("padding_mask", (None, 4), "bool", "mask")),
        ...                      is_dict=True)
        >>> feeds = token_feeds(inputs, np.zeros((2, 4), "int32"))
        >>> sorted(feeds), feeds["padding_mask"].dtype
        (['padding_mask', 'token_ids'], dtype('bool'))
    """
    tokens = np.asarray(tokens)
    if _takes_token_array(inputs):
        return tokens
    values = []
    for spec in inputs.specs:
        value = np.ones(tokens.shape, "int32") if spec.is_mask else tokens
        values.append(value.astype(spec.dtype))
    return inputs.pack(values)


def logits_function(model, inputs, batch_size=32):
    """``fn(tokens) -> logits`` of a Keras model fed as :func:`token_feeds` says.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.core.model_inputs import describe_inputs
        >>> model = reference.build_gpt("tiny")
        >>> fn = logits_function(model, describe_inputs(model))
        >>> fn(np.zeros((2, 64), "int32")).shape
        (2, 64, 256)
    """
    import keras

    def run(tokens):
        outputs = [
            keras.ops.convert_to_numpy(
                model.predict_on_batch(token_feeds(inputs, tokens[i : i + batch_size]))
            )
            for i in range(0, len(tokens), batch_size)
        ]
        return np.concatenate(outputs, axis=0)

    return run


def _windows(windows, count):
    index = np.linspace(0, len(windows) - 1, min(count, len(windows))).round().astype(int)
    return np.asarray(windows[index]).astype(np.int32)


def _strip_for_export(model, keep=()):
    """Bakes the states of techniques that do not export as they are (masks, codebooks).

    ``keep``: techniques the exporter reads itself (``to_tflite`` stores one-shot weight
    grids exactly in ``"int4"`` / ``"dynamic_int8"``, and bakes them in other modes).
    """
    strip = [
        state.technique
        for _, state in layer_state.find_states(model)
        if registry.get_technique(state.technique).export_modes is None
        and state.technique not in keep
    ]
    if not strip:
        return model
    return core_strip.strip_techniques(model, sorted(set(strip)), "export")


def _exports_as_is(model):
    """The TFLite modes the model's remaining techniques allow (``None``: any)."""
    modes = None
    for _, state in layer_state.find_states(model):
        allowed = registry.get_technique(state.technique).export_modes
        if allowed is not None:
            modes = allowed
    return modes


def run_technique(stage, state, ctx):
    """A technique stage: the registry's handler, on a copy stripped of earlier techniques."""
    technique = registry.technique_for_stage(stage.name)
    model = state.model
    if layer_state.find_states(model):
        model = core_strip.strip_techniques(model, None, f"recipe {stage.label}")
    if technique is None:
        raise StageError(
            f"Recipe {stage.label}: no registered technique runs stage {stage.name!r} (was "
            "its plugin unloaded?)."
        )
    state.model = technique.run_stage(model, dict(stage.params), StageRun(stage.label, ctx))
    return state


def run_strip(stage, state, ctx):
    """Bakes pruning masks, codebooks, ... into plain weights.

    QAT layers and GPTQ / AWQ grids stay: the exporter stores them as they are.
    """
    from keras_llmopt._src.llm import grid_state

    del ctx
    stripped = _strip_for_export(state.model, keep=(grid_state.TECHNIQUE,))
    if stripped is state.model:
        logging.info("%s: nothing to strip", stage.label)
    state.model = stripped
    return state


def run_evaluate(stage, state, ctx):
    """Validation bits per byte of the current model."""
    from keras_llmopt._src.reference.evaluation import evaluate

    model = state.model
    if not _takes_token_array(ctx.inputs):
        model = logits_function(model, ctx.inputs)
    result = evaluate(model, ctx.corpus, num_windows=stage.params["windows"])
    logging.info("%s: validation bpb %.4f", stage.label, result.bpb)
    state.evaluations.append({"stage": stage.index, **result.to_dict()})
    return state


def run_export(stage, state, ctx):
    """A verified artifact of the current model (stripped first if needed)."""
    from keras_llmopt._src.export import onnx_export, saved_model, tflite
    from keras_llmopt._src.llm import grid_state

    p = stage.params
    keep = (grid_state.TECHNIQUE,) if p["format"] == "tflite" else ()
    model = _strip_for_export(state.model, keep)
    as_is = _exports_as_is(model)
    path = os.path.join(ctx.out_dir, export_stem(stage))
    windows = _windows(ctx.corpus.validation, p["verify_windows"])
    data = (ctx.feeds(windows[:, :-1]), windows[:, 1:])
    quantization = None if p["quantization"] == "none" else p["quantization"]
    logging.info("%s: writing %s", stage.label, path)
    try:
        if p["format"] == "tflite":
            calibration = None
            if quantization in ("int8", "int16x8") and as_is is None:
                calibration = ctx.feeds(
                    _windows(ctx.corpus.train, p["calibration_windows"])[:, :-1]
                )
            report = tflite.to_tflite(
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
            report = onnx_export.to_onnx(
                model,
                path,
                sequence_length=ctx.sequence_length,
                verify=p["verify"],
                verification_data=data,
            )
        else:
            report = saved_model.to_saved_model(
                model, path, verify=p["verify"], verification_data=data
            )
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


BUILTIN_RUNNERS = {"strip": run_strip, "evaluate": run_evaluate, "export": run_export}


def run_stage(stage, state, ctx):
    """Runs one stage (a built-in or a registered technique's) and records its wall time.

    Example:
        >>> state = run_stage(recipe.stages[0], state, ctx)
    """
    start = time.time()
    runner = BUILTIN_RUNNERS.get(stage.name, run_technique)
    state = runner(stage, state, ctx)
    state.timings.append((stage.label, time.time() - start))
    return state
