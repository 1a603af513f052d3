"""Pruning state shared by the wrapper and by in-place pruned layers.

A "pruning unit" owns, as Keras variables (non-trainable, created with
``aggregation="only_first_replica"`` so replicas may assign them), one mask and
one threshold per pruned weight and a ``pruning_step`` counter. In a training
call it advances the step, asks the schedule whether to prune, recomputes masks
inside the compiled step (``keras.ops.cond``), then runs the layer with each
pruned weight's attribute temporarily replaced by ``weight * mask`` (restored in
``finally``), so gradients reach the variable masked and the variable itself is
never assigned in the forward pass.

The step lives in the graph: each training call adds one, so it follows the
optimizer's iterations without per-batch Python work on either backend
(``UpdatePruningStep`` aligns it with ``optimizer.iterations`` when training
begins). Assigning it from a callback every batch would not reach JAX's
compiled step, which holds the model state between batches.
"""

import contextlib
import dataclasses
import re

import keras
from keras import ops

from keras_llmopt._src.sparsity import masks as masks_lib
from keras_llmopt._src.sparsity import schedules as schedules_lib


@dataclasses.dataclass
class PrunedWeight:
    """One pruned weight and its state variables.

    Attributes:
        path: ``"<relative layer path>/<weight name>"`` inside the unit's layer
            (``"kernel"`` for the layer's own kernel).
        layer: The layer that owns the weight.
        storage_attr: Instance attribute of ``layer`` holding the variable.
        variable: The weight variable.
        input_axes: The weight's input axes.
        mask: Mask variable (float32, same shape).
        threshold: Threshold variable (float32 scalar).
    """

    path: str
    layer: keras.layers.Layer
    storage_attr: str
    variable: keras.Variable
    input_axes: tuple
    mask: keras.Variable = None
    threshold: keras.Variable = None


def variable_base_name(path):
    """A variable-name-safe version of a weight path."""
    return re.sub(r"[^A-Za-z0-9_]", "_", path)


def create_state(owner, pruned_weights, step_name="pruning_step"):
    """Adds mask, threshold and step variables to ``owner`` (a Keras layer).

    Args:
        owner: The layer that will track the variables.
        pruned_weights: List of :class:`PrunedWeight` (``mask``/``threshold``
            filled in place).
        step_name: Name of the step variable.

    Returns:
        The step variable (int32 scalar, starts at -1).
    """
    for pw in pruned_weights:
        base = variable_base_name(pw.path)
        pw.mask = owner.add_weight(
            name=f"{base}_mask",
            shape=tuple(pw.variable.shape),
            dtype="float32",
            initializer="ones",
            trainable=False,
            aggregation="only_first_replica",
        )
        pw.threshold = owner.add_weight(
            name=f"{base}_threshold",
            shape=(),
            dtype="float32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
    return owner.add_weight(
        name=step_name,
        shape=(),
        dtype="int32",
        initializer=keras.initializers.Constant(-1),
        trainable=False,
        aggregation="only_first_replica",
    )


def update_masks(pruned_weights, step_variable, schedule, block_size, pooling, m_by_n):
    """Advances the step and, on a pruning turn, recomputes every mask (in-graph).

    One ``cond`` covers all of the unit's weights (a multi-head attention layer
    has four), so a step that does not prune costs one branch dispatch per unit.
    The assignments stay outside the ``cond``: on JAX its branches must be pure,
    and under ``tf.distribute`` an assignment to a replicated variable is a
    cross-replica synchronisation, which a ``cond`` branch cannot hold. Outside
    a pruning turn they write back the values just read, which TensorFlow does
    without copying the tensors.
    """
    step = ops.convert_to_tensor(step_variable) + 1
    step_variable.assign(step)
    if not pruned_weights:
        return
    should_prune, sparsity = schedule(step)
    should_prune = ops.convert_to_tensor(should_prune)
    sparsity = ops.convert_to_tensor(sparsity, dtype="float32")
    masks = [ops.convert_to_tensor(pw.mask) for pw in pruned_weights]
    thresholds = [ops.convert_to_tensor(pw.threshold) for pw in pruned_weights]

    def compute():
        new_masks, new_thresholds = [], []
        for pw, mask in zip(pruned_weights, masks, strict=True):
            new_mask, new_threshold = masks_lib.magnitude_mask(
                ops.convert_to_tensor(pw.variable),
                mask,
                sparsity,
                pw.input_axes,
                block_size,
                pooling,
                m_by_n,
            )
            new_masks.append(new_mask)
            new_thresholds.append(new_threshold)
        return new_masks, new_thresholds

    def keep():
        return list(masks), list(thresholds)

    new_masks, new_thresholds = ops.cond(should_prune, compute, keep)
    for pw, new_mask, new_threshold in zip(pruned_weights, new_masks, new_thresholds, strict=True):
        pw.mask.assign(new_mask)
        pw.threshold.assign(new_threshold)


@contextlib.contextmanager
def masked_weights(pruned_weights):
    """Within the block, each pruned weight's attribute holds ``weight * mask``."""
    saved = []
    try:
        for pw in pruned_weights:
            value = ops.convert_to_tensor(pw.variable)
            masked = value * ops.cast(ops.convert_to_tensor(pw.mask), value.dtype)
            saved.append((pw.layer, pw.storage_attr, getattr(pw.layer, pw.storage_attr)))
            object.__setattr__(pw.layer, pw.storage_attr, masked)
        yield
    finally:
        for layer, attr, original in reversed(saved):
            object.__setattr__(layer, attr, original)


def check_settings(pruned_weights, block_size, pooling, m_by_n, owner_name):
    """Validates block/N:M settings for every weight (ValueError names the layer)."""
    for pw in pruned_weights:
        masks_lib.validate_settings(
            tuple(pw.variable.shape),
            pw.input_axes,
            block_size,
            pooling,
            m_by_n,
            f"layer '{owner_name}' weight '{pw.path}'",
        )


def settings_config(holder):
    """The pruning settings of a wrapper or state, as config entries."""
    return {
        "pruning_schedule": keras.saving.serialize_keras_object(holder.pruning_schedule),
        "block_size": list(holder.block_size),
        "block_pooling_type": holder.block_pooling_type,
        "sparsity_m_by_n": list(holder.sparsity_m_by_n) if holder.sparsity_m_by_n else None,
    }


def settings_from_config(config):
    """A copy of ``config`` with its pruning schedule deserialized."""
    config = dict(config)
    config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"])
    return config


def normalise_settings(pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n):
    """Validates the user-facing pruning arguments; returns them normalised."""
    schedule = schedules_lib.get(pruning_schedule)
    block_size = masks_lib.check_block_size(block_size)
    pooling = masks_lib.check_pooling(block_pooling_type)
    m_by_n = None
    if sparsity_m_by_n is not None:
        m_by_n = masks_lib.check_m_by_n(sparsity_m_by_n)
        if block_size != (1, 1):
            raise ValueError(
                "sparsity_m_by_n cannot be combined with block_size. "
                f"Received: sparsity_m_by_n={sparsity_m_by_n}, block_size={block_size}"
            )
    return schedule, block_size, pooling, m_by_n
