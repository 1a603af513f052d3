"""Stripping: a copy of a patched model with chosen techniques baked into plain weights.

Works for any mix of layer states: the states of the chosen techniques are evaluated
in inference mode (with the states before them in each layer's chain), written into
the weight variables and removed; other techniques' states stay. Without states
left, the copy has its model's own class again and saves as a plain Keras model. A
compiled model's copy is compiled as it was (loss, metrics, the optimizer's config, a
KerasHub ``CausalLM``'s sampler), with a fresh optimizer state.
"""

from keras import ops

from keras_llmopt._src.core import layer_state, model_copy, saving


def chain_inputs(layer, state):
    """``{attr: value}`` of ``state``'s weights as the states before it leave them.

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 2))
        >>> chain_inputs(dense, layer_state.LayerState())
        {}
    """
    values = {}
    for other in layer_state.states_of(layer):
        if other is state:
            break
        for attr in other.weight_attrs():
            current = values[attr] if attr in values else getattr(layer, attr)
            values[attr] = other.transform_weight(attr, current, False)
    return {
        attr: values[attr] if attr in values else getattr(layer, attr)
        for attr in state.weight_attrs()
    }


def strip_techniques(model, techniques=None, what="stripping"):
    """A copy of ``model`` with the states of ``techniques`` baked in and removed.

    Args:
        model: A ``keras.Model`` (not modified).
        techniques: Technique names (a name, a list, or ``None`` for every state).
        what: What the copy is for (error messages).

    Returns:
        The stripped copy; with no states left, a plain Keras model. It is compiled
        as ``model`` is (a fresh optimizer from its config), or not if ``model`` is not.

    Example:
        >>> import keras
        >>> from keras_llmopt import sparsity
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
        >>> plain = strip_techniques(sparsity.prune_low_magnitude(m))
        >>> layer_state.find_states(plain), saving.is_patched(plain)
        ([], False)
    """
    if isinstance(techniques, str):
        techniques = [techniques]
    chosen = None if techniques is None else set(techniques)
    clean = model_copy.copy_model(model, what, compiled=False)
    for _, state in layer_state.find_states(clean):
        if chosen is not None and state.technique not in chosen:
            continue
        layer = state.get_owner()
        baked = state.baked_weights(chain_inputs(layer, state))
        layer_state.remove(layer, state.technique)
        for attr, value in baked.items():
            variable = getattr(layer, attr)
            variable.assign(ops.cast(value, variable.dtype))
    saving.make_saveable(clean)
    return model_copy.compile_like(clean, model)
