"""Rebuilds a functional or Sequential model with smaller layers and fewer blocks.

Every layer is re-created from its config (with the new ``units`` / ``num_heads``
where a structure shrinks), the graph is re-run on fresh inputs, and the weights are
copied in, sliced along the shrunk axes. A removed block's residual additions pass
their residual input through, so the block's layers are no longer reachable and are
not part of the new model. The result holds built-in Keras layers only where the
original did: it saves and loads without keras_llmopt.
"""

import keras

from keras_llmopt._src.core import keras_compat, model_copy
from keras_llmopt._src.llm import slicing


class _Pass:
    """An addition that returns its residual input (a removed block)."""

    def __init__(self, residual):
        self.residual = residual

    def __call__(self, *args, **kwargs):
        return keras.tree.flatten((args, kwargs))[self.residual]


def rebuild_graph(model, changes, skipped_adds):
    """A new model like ``model`` with ``changes`` applied and ``skipped_adds`` passed through.

    Args:
        model: A functional or Sequential model.
        changes: ``{id(layer): (config overrides, {old size: kept indices})}``.
        skipped_adds: ``{id(add operation): index of its residual input}``.

    Returns:
        The new model (the same kind: functional or Sequential), compiled as
        ``model`` was (fresh optimizer).

    Example:
        >>> import numpy as np
        >>> inputs = keras.Input((3,))
        >>> up = keras.layers.Dense(4, activation="relu", name="up")
        >>> down = keras.layers.Dense(3, name="down")
        >>> model = keras.Model(inputs, down(up(inputs)))
        >>> small = rebuild_graph(model, {id(up): ({"units": 2}, {4: [0, 1]}),
        ...                               id(down): ({}, {4: [0, 1]})}, {})
        >>> small.get_layer("up").units, small.count_params()
        (2, 17)
    """
    graph = keras_compat.graph_of(model)
    created = {}

    def operation_fn(operation):
        key = id(operation)
        if key in skipped_adds:
            return _Pass(skipped_adds[key])
        if not isinstance(operation, keras.layers.Layer):
            return operation
        if key not in created:
            overrides, _ = changes.get(key, ({}, {}))
            config = {**operation.get_config(), **overrides}
            created[key] = (operation, type(operation).from_config(config))
        return created[key][1]

    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), graph.input
    )
    outputs = keras_compat.run_graph(graph, inputs, operation_fn)
    if isinstance(model, keras.Sequential):
        kept = [created[id(layer)][1] for layer in model.layers if id(layer) in created]
        rebuilt = keras.Sequential([inputs, *kept], name=model.name)
    else:
        rebuilt = keras.Model(inputs, outputs, name=model.name)
    for key, (old, new) in created.items():
        if new.built:
            slicing.copy_weights(old, new, changes.get(key, ({}, {}))[1])
    return model_copy.compile_like(rebuilt, model)
