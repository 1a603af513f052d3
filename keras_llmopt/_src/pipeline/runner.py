"""Runs a validated recipe on a model: stage after stage, then a summary file."""

import dataclasses
import json
import os
import time

import keras
from absl import logging

from keras_llmopt._src.core import model_copy, registry
from keras_llmopt._src.core.model_inputs import describe_inputs
from keras_llmopt._src.pipeline import recipe as recipe_lib
from keras_llmopt._src.pipeline import stages as stages_lib
from keras_llmopt._src.reference.cache import atomic_path

SUMMARY_NAME = "pipeline.json"


@dataclasses.dataclass
class PipelineResult:
    """What a recipe run produced.

    Attributes:
        recipe: The :class:`~keras_llmopt._src.pipeline.recipe.Recipe` that ran.
        model: The final Keras model (stripped when the recipe strips).
        artifacts: One dict per exported artifact (path, size, verification).
        evaluations: One dict per ``evaluate`` stage (bpb, loss, ...).
        timings: ``[(stage label, seconds)]``.
        summary_path: The ``pipeline.json`` written into the output folder.

    Example:
        >>> result = run_recipe("examples/recipes/prune50_int8.yaml", model, out_dir="out")
        >>> [a["path"] for a in result.artifacts]
    """

    recipe: object
    model: object
    artifacts: list
    evaluations: list
    timings: list
    summary_path: str

    def to_dict(self):
        """Plain data for JSON (the model is left out)."""
        return {
            "recipe": self.recipe.to_dict(),
            "artifacts": self.artifacts,
            "evaluations": self.evaluations,
            "timings": [{"stage": label, "seconds": s} for label, s in self.timings],
        }


BYTE_VOCABULARY = 256  # the pipeline's corpus is byte-level: token ids 0..255


def resolve_inputs(model, recipe=None, sequence_length=None, what="run_recipe"):
    """The model's inputs at the length a recipe runs at, checked before anything trains.

    The length is ``sequence_length`` if given, else the recipe's ``sequence_length``,
    else what the model fixes or declares as its maximum (the shared core's
    ``describe_inputs``).

    Args:
        model: The ``keras.Model`` the recipe runs on.
        recipe: A ``Recipe`` (its ``sequence_length``), or ``None``.
        sequence_length: An explicit length (``run_recipe``'s argument, the CLI flag).
        what: The caller, for messages.

    Returns:
        A ``ModelInputs`` whose ``sequence_length`` is set.

    Raises:
        ValueError: No length can be told (the message names ``sequence_length=`` and
            ``--sequence_length``), the length contradicts the model (a fixed input
            length, a maximum), or the model takes inputs other than token ids and masks,
            or fewer than 256 token ids.

    Example:
        >>> from keras_llmopt import reference
        >>> resolve_inputs(reference.build_gpt("tiny")).sequence_length
        64
    """
    length = sequence_length
    if length is None and recipe is not None:
        length = recipe.sequence_length
    inputs = describe_inputs(model, sequence_length=length)
    stages_lib.check_token_inputs(inputs, model.name)
    if inputs.sequence_length is None:
        hint = "pass sequence_length=N (the CLI: --sequence_length=N)"
        if what.startswith("optimize"):
            hint = "pass --sequence_length=N"
        raise ValueError(
            f"{what}: cannot tell the sequence length of model '{model.name}': its inputs "
            f"{list(inputs.names)} have a dynamic length and it declares no maximum. "
            f"Received: sequence_length=None; {hint} or set `sequence_length: N` in the "
            "recipe"
        )
    vocabulary = inputs.vocabulary_size
    if vocabulary is not None and vocabulary < BYTE_VOCABULARY:
        raise ValueError(
            f"{what}: model '{model.name}' takes {vocabulary} token ids; the pipeline "
            f"trains and verifies on byte-level text (ids 0..255). Received: a vocabulary of "
            f"{vocabulary}; accepted: at least {BYTE_VOCABULARY}"
        )
    return inputs


def preflight(recipe):
    """Checks, before anything trains, that a technique is registered for every stage.

    Raises:
        StageError: Naming the first stage no built-in runner or registered technique
            runs (e.g. a plugin that was not loaded).

    Example:
        >>> preflight(parse_recipe({"stages": ["strip"]}))
    """
    for stage in recipe.stages:
        if stage.name in stages_lib.BUILTIN_RUNNERS:
            continue
        if registry.technique_for_stage(stage.name) is None:
            raise stages_lib.StageError(
                f"Recipe {stage.label}: no registered technique runs stage {stage.name!r}; "
                "load its plugin (keras-llmopt --plugins=MODULE, or import it) first."
            )


def run_recipe(
    recipe,
    model,
    out_dir,
    corpus=None,
    seed=0,
    verbose="auto",
    save_model=True,
    sequence_length=None,
):
    """Runs a recipe's stages in order on a copy of ``model``; writes into ``out_dir``.

    Everything is validated first (the recipe, the model, the modules the stages need),
    so a bad recipe fails before any training. Fine-tuning stages train on the
    reference corpus (a progress bar per stage); export stages write verified
    artifacts atomically. At the end ``out_dir/pipeline.json`` records the recipe,
    the artifacts with their verification, evaluations and stage timings, and (with
    ``save_model``) the final model is saved as ``out_dir/model.keras``.

    Args:
        recipe: A ``Recipe``, a recipe dict, or the path of a ``.yaml``/``.json`` recipe.
        model: A Keras language model mapping token ids to logits: the reference GPT,
            any functional/Sequential/subclassed model with a ``(batch, T)`` token
            input, or a KerasHub ``CausalLM`` (fed ``token_ids`` and an all-ones
            ``padding_mask``). Its vocabulary must cover bytes (256 ids). It is not
            modified.
        out_dir: Output folder (created if needed).
        corpus: A ``Corpus`` for fine-tuning and verification (default: the reference
            corpus at the model's sequence length).
        seed: Seed of the fine-tuning data order.
        verbose: Keras ``fit`` verbosity.
        save_model: Also save the final model as ``model.keras`` (skipped, with a
            note in the summary, if the model cannot be saved).
        sequence_length: The length to train, calibrate, evaluate and export at;
            overrides the recipe's ``sequence_length``. Needed (here or in the
            recipe) when the model fixes none and declares no maximum (KerasHub Llama,
            Gemma, Mistral, ... with rotary positions).

    Returns:
        A :class:`PipelineResult`.

    Raises:
        ValueError / TypeError: Invalid recipe or arguments (before any training).
        StageError: A stage could not run; the message names it.

    Example:
        >>> from keras_llmopt import pipeline, reference
        >>> model = reference.trained_model("tiny")
        >>> result = pipeline.run_recipe(
        ...     {"stages": [{"prune": {"final_sparsity": 0.5, "steps": 50}}, "strip",
        ...                 {"export": {"quantization": "dynamic_int8"}}]},
        ...     model, out_dir="out")
        >>> result.artifacts[0]["verified"]
        True
    """
    if isinstance(recipe, str | os.PathLike):
        recipe = recipe_lib.load_recipe(recipe)
    elif not isinstance(recipe, recipe_lib.Recipe):
        recipe = recipe_lib.parse_recipe(recipe)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"run_recipe: `model` must be a keras.Model. Received: model of type "
            f"{type(model).__name__}"
        )
    if not isinstance(out_dir, str | os.PathLike) or not os.fspath(out_dir):
        raise TypeError(f"run_recipe: `out_dir` must be a folder path. Received: {out_dir!r}")
    inputs = resolve_inputs(model, recipe, sequence_length)
    length = inputs.sequence_length
    preflight(recipe)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if corpus is None:
        from keras_llmopt._src.reference.corpus import load_corpus

        corpus = load_corpus(length)
    ctx = stages_lib.StageContext(
        corpus, out_dir, length, seed=seed, verbose=verbose, inputs=inputs
    )
    state = stages_lib.PipelineState(model=model_copy.copy_model(model, "a recipe"))
    total = len(recipe.stages)
    start = time.time()
    for stage in recipe.stages:
        logging.info("[%d/%d] %s %s", stage.index + 1, total, stage.name, _brief(stage.params))
        state = stages_lib.run_stage(stage, state, ctx)
    notes = []
    if save_model:
        notes.extend(_save_final(state.model, out_dir))
    result = PipelineResult(
        recipe=recipe,
        model=state.model,
        artifacts=state.artifacts,
        evaluations=state.evaluations,
        timings=state.timings,
        summary_path=os.path.join(out_dir, SUMMARY_NAME),
    )
    summary = {**result.to_dict(), "wall_time_s": time.time() - start, "notes": notes}
    with atomic_path(result.summary_path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(summary, handle, indent=2, default=str)
    logging.info("Recipe %r done in %.0f s: %s", recipe.name, time.time() - start, out_dir)
    return result


def _brief(params):
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None) or ""


def _save_final(model, out_dir):
    path = os.path.join(out_dir, "model.keras")
    try:
        with atomic_path(path) as tmp:
            model.save(tmp)
    except Exception as error:  # a QAT or in-place pruned model may not be savable
        logging.warning("Final model not saved as .keras: %s", error)
        return [f"final model not saved as model.keras: {type(error).__name__}: {error}"]
    return []
