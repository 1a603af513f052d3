"""Techniques: the shared mechanism behind pruning, quantization, clustering and yours.

A technique is a :class:`LayerState` subclass (its variables on one layer and what it
does to the layer's call) plus a :class:`Technique` registered with
:func:`register_technique`. Once registered, recipes (``keras_llmopt.pipeline``),
``keras-llmopt optimize`` (``--plugins=`` loads a module from outside the package),
the benchmark's variants, ``model.save`` / ``keras.saving.load_model`` and stripping
all handle it; none of them is edited. See the README's "Adding a technique".

Example:
    >>> from keras_llmopt import techniques
    >>> [t.stage for t in techniques.techniques()][:3]
    ['prune', 'cluster', 'quantize']
"""

from keras_llmopt._src.core.hooks import capture_inputs, intercept
from keras_llmopt._src.core.layer_state import LayerState, find_states, get_state, states_of
from keras_llmopt._src.core.layer_state import install as install_state
from keras_llmopt._src.core.layer_state import remove as remove_state
from keras_llmopt._src.core.layer_tree import find_weights, walk_layers
from keras_llmopt._src.core.model_copy import copy_model
from keras_llmopt._src.core.registry import (
    Technique,
    get_technique,
    load_plugins,
    register_technique,
    techniques,
    unregister_technique,
)
from keras_llmopt._src.core.saving import make_saveable
from keras_llmopt._src.core.strip import strip_techniques
from keras_llmopt._src.core.targeting import select_layers

__all__ = [
    "LayerState",
    "Technique",
    "capture_inputs",
    "copy_model",
    "find_states",
    "find_weights",
    "get_state",
    "get_technique",
    "install_state",
    "intercept",
    "load_plugins",
    "make_saveable",
    "register_technique",
    "remove_state",
    "select_layers",
    "states_of",
    "strip_techniques",
    "techniques",
    "unregister_technique",
    "walk_layers",
]
