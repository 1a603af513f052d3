"""``strip_pruning``: a plain Keras model with the masks multiplied into the weights."""

import keras
from keras import ops

from keras_llmopt._src.core import keras_compat, model_copy
from keras_llmopt._src.core import strip as core_strip
from keras_llmopt._src.sparsity import inplace
from keras_llmopt._src.sparsity.units import pruning_units
from keras_llmopt._src.sparsity.wrapper import PruneLowMagnitude


def _bake(pw, target_variable=None):
    variable = target_variable if target_variable is not None else pw.variable
    value = ops.convert_to_tensor(pw.variable) * ops.cast(
        ops.convert_to_tensor(pw.mask), pw.variable.dtype
    )
    variable.assign(value)


def _strip_graph_model(model):
    work = model_copy.copy_model(model, "stripping pruning")

    def unwrap(layer):
        if isinstance(layer, PruneLowMagnitude):
            for pw in layer.pruned:
                _bake(pw)
            return layer.layer
        return layer

    return keras.models.clone_model(work, clone_function=unwrap)


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
        work = model_copy.copy_model(model, "stripping pruning")
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
    if not wrappers:
        # In-place states (any mix with other techniques): the core bakes and removes
        # the pruning states of a copy; other techniques' states stay.
        return core_strip.strip_techniques(model, inplace.TECHNIQUE, "stripping pruning")
    nested = [u.node_path for u in wrappers if "/" in u.node_path]
    if nested or not isinstance(model, keras.Sequential | keras_compat.Functional):
        raise ValueError(
            f"PruneLowMagnitude wrappers at {nested or [u.node_path for u in wrappers]} are "
            f"inside '{model.name}', which cannot be rebuilt. Prune the whole model with "
            "prune_low_magnitude(model) instead of wrapping layers by hand."
        )
    return _strip_graph_model(model)
