"""``prune_low_magnitude``: the entry point (tfmot name and semantics, any Keras 3 model)."""

import warnings

import keras
from absl import logging

from keras_llmopt._src.core import keras_compat, model_copy, saving, targeting
from keras_llmopt._src.sparsity import inplace
from keras_llmopt._src.sparsity import policy as policy_lib
from keras_llmopt._src.sparsity import schedules as schedules_lib
from keras_llmopt._src.sparsity import state as state_lib
from keras_llmopt._src.sparsity.wrapper import PruneLowMagnitude

_DEFAULT_SCHEDULE = schedules_lib.ConstantSparsity(0.5, 0)


def _prune_in_place(model, selected, settings):
    if not keras_compat.call_has_training_arg(model):
        warnings.warn(
            f"The call() of model '{model.name}' has no `training` argument, so Keras runs "
            "its layers in inference mode during fit() and nothing will be pruned. Add "
            "`training=None` to call() and pass it on to the sublayers.",
            stacklevel=3,
        )
    for _, (layer, weights) in selected.items():
        inplace.attach(layer, *settings, weights=weights)
    return saving.make_saveable(model)


def prune_low_magnitude(
    to_prune,
    pruning_schedule=_DEFAULT_SCHEDULE,
    block_size=(1, 1),
    block_pooling_type="AVG",
    sparsity_m_by_n=None,
    pruning_policy=None,
    targets=None,
    ignore=None,
    include_embeddings=False,
):
    """Prunes the low-magnitude weights of a layer, a list of layers or any Keras 3 model.

    tfmot's name and semantics: a layer gives a :class:`PruneLowMagnitude`
    wrapper, a list gives a list of wrappers, a model gives a new pruned
    model (the model passed in is never modified). Any model (functional,
    Sequential, subclassed, nested custom layers, KerasHub backbones and
    CausalLMs) is pruned in place on a copy: the targeted layers keep their
    place and carry their masks as tracked variables, so ``model.save`` /
    ``keras.saving.load_model``, ``save_weights`` and checkpoints keep masks and
    step and training resumes mid-schedule.

    Dense, EinsumDense (attention q/k/v/o projections, MLPs) and Conv kernels
    are pruned by default; Embedding on request; the token embedding and the
    output head stay dense unless named in ``targets``. The returned model
    has a ``pruning_report`` attribute (what was pruned, what was skipped and
    why). Train it with ``fit`` (add :class:`UpdatePruningStep`) or a custom
    loop: the step advances in every training call.

    Args:
        to_prune: A layer, a list of layers or a ``keras.Model``.
        pruning_schedule: A :class:`PruningSchedule` or a tfmot schedule.
        block_size: ``(rows, cols)`` blocks of each weight's
            ``(outputs, inputs)`` view pruned together.
        block_pooling_type: "AVG" or "MAX" pooling of ``|w|`` in a block.
        sparsity_m_by_n: e.g. ``(2, 4)``: at most 2 non-zeros in each group
            of 4 along the input dimension.
        pruning_policy: A :class:`PruningPolicy` deciding per layer.
        targets: Layer path patterns to prune (glob, or ``"re:<regex>"``);
            default: every prunable layer minus the default ignores.
        ignore: Layer path patterns to leave dense.
        include_embeddings: Prune embeddings other than the token embedding.

    Returns:
        A wrapper, a list of wrappers, or the pruned model.

    Raises:
        ValueError: On bad settings (named, with the value received), layers
            whose shapes do not fit block/N:M settings, or when nothing is
            selected.
        TypeError: On an unsupported ``to_prune`` or schedule.

    Example:
        >>> import keras
        >>> from keras_llmopt.sparsity import PolynomialDecay
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="a"),
        ...                           keras.layers.Dense(4, name="b")])
        >>> pruned = prune_low_magnitude(model, PolynomialDecay(0.0, 0.5, 0, 10, frequency=1))
        >>> pruned.pruning_report.selected_paths
        ['a', 'b']
    """
    settings = state_lib.normalise_settings(
        pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n
    )
    layer_filter = policy_lib.layer_filter(pruning_policy)
    if not isinstance(include_embeddings, bool):
        raise TypeError(
            "`include_embeddings` must be True or False. "
            f"Received: include_embeddings={include_embeddings!r}"
        )
    if isinstance(to_prune, list | tuple):
        return [prune_low_magnitude(layer, *settings, pruning_policy) for layer in to_prune]
    if not isinstance(to_prune, keras.layers.Layer):
        raise TypeError(
            "`to_prune` must be a keras.Model, a keras.layers.Layer or a list of layers. "
            f"Received: to_prune={to_prune!r} of type {type(to_prune).__name__}"
        )
    if not isinstance(to_prune, keras.Model):
        if pruning_policy is not None and not pruning_policy.allow_pruning(to_prune, to_prune.name):
            raise ValueError(
                f"Layer '{to_prune.name}' is not allowed by pruning_policy "
                f"{type(pruning_policy).__name__}."
            )
        return PruneLowMagnitude(to_prune, *settings)
    if not to_prune.built:
        raise ValueError(
            f"Model '{to_prune.name}' is not built. Call it on a batch (or build it) "
            "before pruning."
        )
    if pruning_policy is not None:
        pruning_policy.ensure_model_supports_pruning(to_prune)
    model = model_copy.copy_model(to_prune, "pruning")
    report, selected = targeting.select_layers(
        model,
        targets=targets,
        ignore=ignore,
        include_embeddings=include_embeddings,
        layer_filter=layer_filter,
    )
    if not selected:
        raise ValueError(f"Nothing to prune in model '{model.name}'.\n{report}")
    pruned = _prune_in_place(model, selected, settings)
    object.__setattr__(pruned, "pruning_report", report)
    logging.info("prune_low_magnitude: %s", report)
    return pruned


def pruning_report(model):
    """The report attached by :func:`prune_low_magnitude` (or ``None``).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
        >>> print(pruning_report(prune_low_magnitude(model)).selected_paths)
        ['a']
    """
    return getattr(model, "pruning_report", None)
