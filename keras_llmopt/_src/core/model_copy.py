"""One model copy: a deep, independent copy of any Keras model a user can call.

Keras copies a model through its saving code (config, then variables), which finds
classes by their registered names. A user's subclassed model or custom layer may
never have been registered (``register_keras_serializable``); the live model's own
classes are then handed to the copy as custom objects, so it rebuilds from the
very classes it was made of. Patched models (layer states) copy through
``core.saving``, states and all. The user's model is never modified.
"""

import copy

import keras

from keras_llmopt._src.core import layer_tree, saving


def live_classes(model):
    """``{name: class}`` of the model and every layer in its tree, under each name Keras uses.

    Example:
        >>> class Mine(keras.layers.Layer):
        ...     def call(self, x):
        ...         return x
        >>> m = keras.Sequential([keras.Input((2,)), Mine()])
        >>> sorted(live_classes(m))
        ['Mine']
    """
    objects = {}
    classes = [saving.float_class(model)]
    classes += [saving.float_class(node.layer) for node in layer_tree.walk_layers(model)]
    for cls in classes:
        name = keras.saving.get_registered_name(cls)
        if cls.__module__.startswith("keras.") or keras.saving.get_registered_object(name):
            continue  # Keras's own and registered classes resolve by themselves
        objects.setdefault(cls.__name__, cls)
    return objects


def copy_model(model, what="copying", compiled=True):
    """A deep, independent copy of ``model`` (weights, states and, optionally, compile).

    Args:
        model: Any ``keras.Model`` (functional, Sequential, subclassed, KerasHub),
            patched or not, with registered custom classes or not.
        what: The operation the copy is for, used in the error message.
        compiled: Keep the compiled optimizer, loss and metrics. With ``False`` the
            copy is uncompiled (for a strip, whose optimizer state would not fit).

    Returns:
        The copy.

    Raises:
        ValueError: The model cannot be serialized (e.g. a custom class whose
            ``__init__`` takes objects Keras cannot describe and which has no
            ``get_config``); the message says what to add.

    Example:
        >>> class Twice(keras.layers.Layer):  # never registered
        ...     def call(self, x):
        ...         return 2 * x
        >>> inputs = keras.Input((3,))
        >>> model = keras.Model(inputs, Twice()(keras.layers.Dense(3)(inputs)))
        >>> twin = copy_model(model)
        >>> twin is model, type(twin.layers[-1]).__name__
        (False, 'Twice')
    """
    saved = {}
    if not compiled:
        saved = {k: vars(model)[k] for k in ("optimizer", "compiled") if k in vars(model)}
    try:
        for key in saved:
            object.__setattr__(model, key, None if key == "optimizer" else False)
        with keras.saving.custom_object_scope(live_classes(model)):
            return copy.deepcopy(model)
    except Exception as error:
        raise ValueError(
            f"Could not copy model '{model.name}' ({type(model).__name__}) for {what} (the "
            f"user's model is never modified): {type(error).__name__}: {error}. A custom "
            "layer or model whose constructor takes objects Keras cannot serialize needs a "
            "`get_config()` returning its constructor arguments."
        ) from error
    finally:
        for key, value in saved.items():
            object.__setattr__(model, key, value)
