"""In-place pruning of a layer: a :class:`PruningState` on the shared layer-state core.

``prune_low_magnitude(model)`` prunes every targeted layer where it stands
(functional, Sequential, subclassed, nested custom layers, KerasHub): the layer gets
a :class:`PruningState` (masks, thresholds and step as tracked Keras variables, so
``fit``, custom loops, checkpoints and ``model.save`` carry them) and the core's
interceptor updates the masks in a training call and gives the layer
``weight * mask`` to compute with. The model saves and loads with ``model.save`` /
``keras.saving.load_model`` (``core.saving``) and resumes mid-schedule.
"""

import keras
from keras import ops

from keras_llmopt._src.core import layer_state, layer_tree
from keras_llmopt._src.sparsity import state as state_lib

TECHNIQUE = "pruning"
STATE_ATTR = layer_state.state_attr(TECHNIQUE)


@keras.saving.register_keras_serializable(package="keras_llmopt")
class PruningState(layer_state.LayerState):
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

    technique = TECHNIQUE
    order = 10

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
        self.pruning_step = None

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
        self.pruning_step = state_lib.create_state(self, pruned)

    # -- layer-state hooks --------------------------------------------------------

    def weight_attrs(self):
        return [pw.storage_attr for pw in self.pruned]

    def before_call(self, training):
        if training:
            update_masks_of(self)

    def transform_weight(self, attr, value, training):
        for pw in self.pruned:
            if pw.storage_attr == attr:
                value = ops.convert_to_tensor(value)
                return value * ops.cast(ops.convert_to_tensor(pw.mask), value.dtype)
        return value

    def baked_weights(self, values):
        return {
            pw.storage_attr: self.transform_weight(pw.storage_attr, values[pw.storage_attr], False)
            for pw in self.pruned
        }

    def record(self):
        return {**state_lib.settings_config(self), "weights": [pw.path for pw in self.pruned]}

    def get_config(self):
        config = super().get_config()
        config.update(state_lib.settings_config(self))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**state_lib.settings_from_config(config))


def update_masks_of(holder):
    """Advances a pruning holder's step and recomputes its masks (a state or a wrapper)."""
    state_lib.update_masks(
        holder.pruned,
        holder.pruning_step,
        holder.pruning_schedule,
        holder.block_size,
        holder.block_pooling_type,
        holder.sparsity_m_by_n,
    )


def _layer_weights(layer, names=None):
    weights, reason = layer_tree.find_weights(layer)
    if reason:
        raise ValueError(f"Layer '{layer.name}' cannot be pruned: {reason}.")
    if names is not None:
        weights = [w for w in weights if w.name in names]
    return weights


def attach(layer, pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n, weights=None):
    """Prunes ``layer`` in place: installs a :class:`PruningState` on it.

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
    if weights is None:
        weights = _layer_weights(layer)
    state = PruningState(
        pruning_schedule,
        block_size,
        block_pooling_type,
        sparsity_m_by_n,
        name=f"{layer.name}_pruning_state",
    )
    state.setup(layer, weights)
    layer_state.install(layer, state)
    return state


def restore(layer, record, path):
    """Re-creates a saved layer's :class:`PruningState` (values are loaded after).

    Example:
        >>> import keras
        >>> from keras_llmopt.sparsity import ConstantSparsity
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> record = attach(dense, ConstantSparsity(0.5, 0), (1, 1), "AVG", None).record()
        >>> twin = keras.layers.Dense(4)
        >>> twin.build((None, 8))
        >>> [pw.path for pw in restore(twin, record, "twin").pruned]
        ['kernel']
    """
    del path
    settings = state_lib.settings_from_config({k: v for k, v in record.items() if k != "weights"})
    state = PruningState(**settings, name=f"{layer.name}_pruning_state")
    state.setup(layer, _layer_weights(layer, set(record["weights"])))
    return state
