"""``PruneLowMagnitude``: a serializable wrapper that prunes any layer's weights."""

import keras

from keras_llmopt._src.core import keras_compat, layer_state, layer_tree, targeting
from keras_llmopt._src.sparsity import inplace
from keras_llmopt._src.sparsity import schedules as schedules_lib
from keras_llmopt._src.sparsity import state as state_lib


def _resolve_weights(layer, pruned_weights, owner_name):
    """Turns weight paths (or ``None`` = automatic) into :class:`PrunedWeight` records."""
    by_path = {"": layer}
    by_path.update({n.path: n.layer for n in layer_tree.walk_layers(layer)})
    if pruned_weights is None:
        if layer_tree.is_registered(layer):
            weights, reason = layer_tree.find_weights(layer)
            if reason:
                raise ValueError(f"Layer '{layer.name}' cannot be pruned: {reason}.")
            pruned_weights = [w.name for w in weights]
        else:
            _, selected = targeting.select_layers(layer)
            pruned_weights = [f"{p}/{w.name}" for p, (_, ws) in selected.items() for w in ws]
        if not pruned_weights:
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has no prunable weights: "
                "neither it nor its sublayers are Dense, EinsumDense, Conv or Embedding "
                "(register other types with keras_llmopt._src.core.register_weights)."
            )
    records = []
    for spec in pruned_weights:
        rel, _, name = spec.rpartition("/")
        sub = by_path.get(rel)
        if sub is None:
            raise ValueError(
                f"`pruned_weights` entry {spec!r} names no sublayer of '{owner_name}'. "
                f"Known sublayer paths: {sorted(p for p in by_path if p)}. "
                f"Received: pruned_weights={list(pruned_weights)!r}"
            )
        weights, reason = layer_tree.find_weights(sub)
        match = [w for w in weights if w.name == name]
        if not match:
            raise ValueError(
                f"`pruned_weights` entry {spec!r}: layer '{sub.name}' has no prunable weight "
                f"{name!r} ({reason or 'available: ' + str([w.name for w in weights])}). "
                f"Received: pruned_weights={list(pruned_weights)!r}"
            )
        w = match[0]
        records.append(state_lib.PrunedWeight(spec, sub, w.storage_attr, w.variable, w.input_axes))
    return records


@keras.saving.register_keras_serializable(package="keras_llmopt")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer and prunes its weights (or its sublayers' weights) during training.

    Masks, thresholds and the pruning step are non-trainable Keras variables of
    the wrapper, so ``model.save``/``keras.saving.load_model``, checkpoints and
    distribution strategies carry them. In a training call the step advances
    by one and, on the schedule's pruning turns, masks are recomputed inside
    the compiled step; the wrapped layer then runs with ``weight * mask``.

    Usually created by :func:`prune_low_magnitude`; can wrap any layer,
    including a ``MultiHeadAttention`` or a KerasHub transformer block (its
    q/k/v/o and MLP projections are pruned).

    Args:
        layer: The layer to wrap.
        pruning_schedule: A schedule (ours or tfmot's). Defaults to
            ``ConstantSparsity(0.5, 0)``.
        block_size: ``(rows, cols)`` blocks of the ``(outputs, inputs)`` view
            pruned together.
        block_pooling_type: "AVG" or "MAX".
        sparsity_m_by_n: e.g. ``(2, 4)``: at most 2 non-zeros in each group
            of 4 along the input dimension (overrides the schedule's sparsity
            at pruning turns, as in tfmot).
        pruned_weights: Paths ``"<sublayer path>/<weight>"`` relative to
            ``layer`` (``"kernel"`` for its own). ``None``: the layer's own
            registered weights, else those of its sublayers.
        **kwargs: Base layer arguments (``name`` defaults to
            ``"prune_low_magnitude_<layer name>"``).

    Example:
        >>> import keras
        >>> from keras_llmopt.sparsity import ConstantSparsity
        >>> layer = PruneLowMagnitude(keras.layers.Dense(4), ConstantSparsity(0.5, 0, frequency=1))
        >>> _ = layer(keras.ops.ones((2, 8)), training=True)
        >>> float(keras.ops.mean(layer.pruned[0].mask))
        0.5
    """

    def __init__(
        self,
        layer,
        pruning_schedule=None,
        block_size=(1, 1),
        block_pooling_type="AVG",
        sparsity_m_by_n=None,
        pruned_weights=None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "PruneLowMagnitude wraps a keras.layers.Layer. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(f"Layer '{layer.name}' is already wrapped for pruning.")
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        if pruning_schedule is None:
            pruning_schedule = schedules_lib.ConstantSparsity(0.5, 0)
        if isinstance(pruning_schedule, dict) and "module" in pruning_schedule:
            pruning_schedule = keras.saving.deserialize_keras_object(pruning_schedule)
        (
            self.pruning_schedule,
            self.block_size,
            self.block_pooling_type,
            self.sparsity_m_by_n,
        ) = state_lib.normalise_settings(
            pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n
        )
        if pruned_weights is not None:
            if isinstance(pruned_weights, str) or not all(
                isinstance(p, str) for p in pruned_weights
            ):
                raise TypeError(
                    "`pruned_weights` must be a list of weight paths such as "
                    f"['query/kernel']. Received: pruned_weights={pruned_weights!r}"
                )
            pruned_weights = list(pruned_weights)
        self._pruned_weight_spec = pruned_weights
        object.__setattr__(self, "pruned", [])
        self.pruning_step = None

    def __call__(self, *args, **kwargs):
        if not self.built and not self.layer.built:
            # Build the wrapped layer from the real call arguments (several inputs,
            # keyword inputs), symbolically, so no compute is spent.
            call_kwargs = {k: v for k, v in kwargs.items() if k != "training"}
            keras_compat.compute_output_spec(self.layer, *args, **call_kwargs)
        return super().__call__(*args, **kwargs)

    def build(self, input_shape=None):
        if not self.layer.built:
            if input_shape is None:
                raise ValueError(
                    f"Cannot build '{self.name}': the wrapped layer '{self.layer.name}' is "
                    "not built and takes several inputs. Build it (or call it once) "
                    "before wrapping."
                )
            self.layer.build(input_shape)
        pruned = _resolve_weights(self.layer, self._pruned_weight_spec, self.name)
        state_lib.check_settings(
            pruned, self.block_size, self.block_pooling_type, self.sparsity_m_by_n, self.name
        )
        object.__setattr__(self, "pruned", pruned)
        self.pruning_step = state_lib.create_state(self, pruned)
        self.built = True

    def call(self, inputs, *args, training=None, **kwargs):
        if layer_state.is_training(training):
            inplace.update_masks_of(self)
        if training is not None and keras_compat.call_has_training_arg(self.layer):
            kwargs["training"] = training
        with state_lib.masked_weights(self.pruned):
            return self.layer(inputs, *args, **kwargs)

    @property
    def pruned_weight_paths(self):
        """Paths (relative to the wrapped layer) of the pruned weights."""
        if self.built:
            return [pw.path for pw in self.pruned]
        return self._pruned_weight_spec

    def get_config(self):
        config = super().get_config()
        config.update(state_lib.settings_config(self))
        config["pruned_weights"] = self.pruned_weight_paths
        return config
