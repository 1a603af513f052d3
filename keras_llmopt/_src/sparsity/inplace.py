"""In-place pruning of layers inside models that cannot be rebuilt from a graph.

Subclassed models, nested custom layers and KerasHub backbones/CausalLMs keep
their structure: each targeted leaf layer gets a :class:`PruningState` sublayer
(masks, thresholds and step as tracked Keras variables, so ``fit``, custom
loops, ``save_weights``/``load_weights`` and checkpoints carry them) and its
``call`` is intercepted by an instance attribute that updates the masks in a
training call and runs the original ``call`` with ``weight * mask``.

A ``.keras`` file cannot describe these patches (the model is rebuilt from its
own config), so ``get_config`` of such a model raises a clear error instead of
silently saving a model that would load without its masks. Save with
``save_weights`` and restore by re-applying ``prune_low_magnitude`` then
``load_weights``, or ``strip_pruning`` first.
"""

import keras

from keras_llmopt._src.core.layer_state import call_training, set_tracked
from keras_llmopt._src.sparsity import state as state_lib

STATE_ATTR = "_llmopt_pruning_state"


@keras.saving.register_keras_serializable(package="keras_llmopt")
class PruningState(keras.layers.Layer):
    """Holds the pruning variables of one in-place pruned layer (not called itself).

    Args:
        pruning_schedule: The schedule.
        block_size: Block size.
        block_pooling_type: "AVG" or "MAX".
        sparsity_m_by_n: ``None`` or ``(m, n)``.
        **kwargs: Base layer arguments.

    Example:
        >>> import keras
        >>> from keras_llmopt._src.sparsity import inplace
        >>> from keras_llmopt.sparsity import ConstantSparsity
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> state = inplace.attach(dense, ConstantSparsity(0.5, 0, frequency=1), (1, 1), "AVG",
        ...                        None)
        >>> _ = dense(keras.ops.ones((1, 8)), training=True)
        >>> float(keras.ops.mean(state.pruned[0].mask))
        0.5
    """

    def __init__(self, pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n, **kwargs):
        super().__init__(**kwargs)
        (
            self.pruning_schedule,
            self.block_size,
            self.block_pooling_type,
            self.sparsity_m_by_n,
        ) = state_lib.normalise_settings(
            pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n
        )
        object.__setattr__(self, "pruned", [])
        # A callable, not the layer: Keras's saving walks attributes and the owner
        # holds this state, so a direct reference would be a cycle.
        object.__setattr__(self, "_owner", lambda: None)
        object.__setattr__(self, "original_call", None)

    def setup(self, owner, weights):
        """Creates the variables for ``weights`` (WeightRef list) of ``owner``."""
        pruned = [
            state_lib.PrunedWeight(w.name, owner, w.storage_attr, w.variable, w.input_axes)
            for w in weights
        ]
        state_lib.check_settings(
            pruned, self.block_size, self.block_pooling_type, self.sparsity_m_by_n, owner.name
        )
        object.__setattr__(self, "pruned", pruned)
        object.__setattr__(self, "_owner", lambda: owner)
        self.pruning_step = state_lib.create_state(self, pruned)
        self.built = True

    def get_owner(self):
        """The layer whose weights this state prunes."""
        return self._owner()

    def call(self, *args, **kwargs):
        raise RuntimeError("PruningState holds variables only; it is not meant to be called.")

    def get_config(self):
        config = super().get_config()
        config.update(state_lib.settings_config(self))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**state_lib.settings_from_config(config))


def _patch_call(layer, state):
    original = layer.call
    object.__setattr__(state, "original_call", original)

    def pruned_call(*args, **kwargs):
        if call_training(kwargs):
            state_lib.update_masks(
                state.pruned,
                state.pruning_step,
                state.pruning_schedule,
                state.block_size,
                state.block_pooling_type,
                state.sparsity_m_by_n,
            )
        with state_lib.masked_weights(state.pruned):
            return original(*args, **kwargs)

    object.__setattr__(layer, "call", pruned_call)


def attach(layer, pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n, weights=None):
    """Prunes ``layer`` in place: adds a :class:`PruningState` and intercepts ``call``.

    Args:
        layer: A built layer with registered weights.
        pruning_schedule: Schedule.
        block_size: Block size.
        block_pooling_type: "AVG" or "MAX".
        sparsity_m_by_n: ``None`` or ``(m, n)``.
        weights: ``WeightRef`` list (default: all of the layer's registered weights).

    Returns:
        The :class:`PruningState`.
    """
    from keras_llmopt._src.core import layer_tree

    if weights is None:
        weights, reason = layer_tree.find_weights(layer)
        if reason:
            raise ValueError(f"Layer '{layer.name}' cannot be pruned: {reason}.")
    state = PruningState(
        pruning_schedule,
        block_size,
        block_pooling_type,
        sparsity_m_by_n,
        name=f"{layer.name}_pruning_state",
        dtype="float32",
    )
    state.setup(layer, weights)
    set_tracked(layer, STATE_ATTR, state)
    _patch_call(layer, state)
    return state


def detach(layer):
    """Undoes :func:`attach` on ``layer``; returns the removed state (or ``None``)."""
    state = getattr(layer, STATE_ATTR, None)
    if state is None:
        return None
    if "call" in vars(layer):
        object.__delattr__(layer, "call")
    set_tracked(layer, STATE_ATTR, None)
    return state


def reattach(layer, state):
    """Re-installs a state removed by :func:`detach`."""
    set_tracked(layer, STATE_ATTR, state)
    _patch_call(layer, state)


def _refuse_config(model):
    def get_config():
        raise ValueError(
            f"Model '{model.name}' was pruned in place (it is not a plain functional or "
            "Sequential model), so its config cannot describe the pruning and a `.keras` "
            "file would load without its masks. Use `model.save_weights(...)` and restore "
            "with `prune_low_magnitude(<same model>, <same arguments>)` then "
            "`load_weights(...)`, or call `keras_llmopt.sparsity.strip_pruning(model)` "
            "before `model.save(...)`."
        )

    object.__setattr__(model, "get_config", get_config)


def mark_model(model):
    """Makes ``model.get_config`` (and so ``model.save``) fail loudly."""
    _refuse_config(model)


def unmark_model(model):
    """Undoes :func:`mark_model`."""
    if "get_config" in vars(model):
        object.__delattr__(model, "get_config")
