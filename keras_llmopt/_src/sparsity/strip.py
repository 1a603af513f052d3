"""``strip_pruning``: a plain Keras model with the masks multiplied into the weights."""

import keras
from keras import ops

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.sparsity import inplace
from keras_llmopt._src.sparsity.prune import copy_model
from keras_llmopt._src.sparsity.units import pruning_units
from keras_llmopt._src.sparsity.wrapper import PruneLowMagnitude


def _bake(pw, target_variable=None):
    variable = target_variable if target_variable is not None else pw.variable
    value = ops.convert_to_tensor(pw.variable) * ops.cast(
        ops.convert_to_tensor(pw.mask), pw.variable.dtype
    )
    variable.assign(value)


def _strip_graph_model(model):
    work = copy_model(model, "pruned model")

    def unwrap(layer):
        if isinstance(layer, PruneLowMagnitude):
            for pw in layer.pruned:
                _bake(pw)
            return layer.layer
        return layer

    return keras.models.clone_model(work, clone_function=unwrap)


def _strip_in_place(model, units):
    detached = []
    try:
        for unit in units:
            owner = unit.holder.get_owner()
            detached.append((owner, inplace.detach(owner)))
        inplace.unmark_model(model)
        clean = copy_model(model, "pruned model")
    finally:
        for owner, state in detached:
            inplace.reattach(owner, state)
        inplace.mark_model(model)
    for unit in units:
        layer = layer_tree.get_layer_by_path(clean, unit.path)
        for pw in unit.pruned:
            _bake(pw, getattr(layer, pw.storage_attr))
    return clean


def strip_pruning(model):
    """Returns a plain Keras model with pruned weights zeroed in place (tfmot name).

    No wrapper classes, mask variables or patched calls remain, so the result
    ``model.save``s to a ``.keras`` file that loads where keras_llmopt is not
    installed. The pruned model passed in is not modified.

    Args:
        model: A model returned by :func:`prune_low_magnitude` (or one with
            ``PruneLowMagnitude`` wrappers at the top level).

    Returns:
        A new ``keras.Model`` (a copy when nothing is pruned).

    Raises:
        ValueError: If wrappers sit inside a model that cannot be rebuilt.

    Example:
        >>> import keras
        >>> from keras_llmopt.sparsity import prune_low_magnitude
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
        >>> stripped = strip_pruning(prune_low_magnitude(model))
        >>> [type(layer).__name__ for layer in stripped.layers]
        ['Dense']
    """
    if isinstance(model, PruneLowMagnitude):
        work = copy_model(model, "wrapper")
        for pw in work.pruned:
            _bake(pw)
        return work.layer
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model. Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    units = pruning_units(model)
    wrappers = [u for u in units if isinstance(u.holder, PruneLowMagnitude)]
    states = [u for u in units if isinstance(u.holder, inplace.PruningState)]
    if wrappers and states:
        raise ValueError("Model mixes wrapped and in-place pruned layers; cannot strip it.")
    if states:
        return _strip_in_place(model, states)
    if not wrappers:
        return copy_model(model)
    nested = [u.node_path for u in wrappers if "/" in u.node_path]
    if nested or not isinstance(model, keras.Sequential | keras_compat.Functional):
        raise ValueError(
            f"PruneLowMagnitude wrappers at {nested or [u.node_path for u in wrappers]} are "
            f"inside '{model.name}', which cannot be rebuilt. Prune the whole model with "
            "prune_low_magnitude(model) instead of wrapping layers by hand."
        )
    return _strip_graph_model(model)
