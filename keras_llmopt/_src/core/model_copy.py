"""One model copy: a deep, independent copy of any Keras model a user can call.

Keras copies a model through its saving code (config, then variables), which finds
classes by their registered names. A user's subclassed model or custom layer may
never have been registered (``register_keras_serializable``); the live model's own
classes are then handed to the copy as custom objects, so it rebuilds from the
very classes it was made of. Patched models (layer states) copy through
``core.saving``, states and all. The user's model is never modified.

A copy is compiled as its model was (:func:`compile_like`): Keras's loading does not
call a ``compile`` that a class overrides (KerasHub tasks), and a KerasHub
``CausalLM``'s ``sampler`` is not in any compile config, so both are carried here.
"""

import copy

import keras
from absl import logging

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


def _sampler_copy(model):
    """A fresh copy of a KerasHub ``CausalLM``'s sampler, or ``None`` without one."""
    sampler = getattr(model, "sampler", None)
    if sampler is None or not hasattr(sampler, "get_config"):
        return None
    return type(sampler).from_config(sampler.get_config())


def _compile_kwargs(model):
    """``compile(**kwargs)`` rebuilt from ``model``'s compile config, or ``None``."""
    if not getattr(model, "compiled", False):
        return None
    try:
        config = model.get_compile_config()
        if not config:
            return None
        with keras.saving.custom_object_scope(live_classes(model)):
            return keras.saving.deserialize_keras_object(config)
    except Exception as error:  # an object Keras cannot serialize (a plain callable loss)
        logging.warning(
            "The compile config of model '%s' cannot be rebuilt (%s: %s); its copy keeps "
            "the compile of its own class.",
            model.name,
            type(error).__name__,
            error,
        )
        return None


def _optimizer_state(source, target):
    """Gives ``target``'s optimizer the variables (moments, step) of ``source``'s."""
    old, new = getattr(source, "optimizer", None), getattr(target, "optimizer", None)
    if old is None or new is None or not old.built:
        return
    new.build(target.trainable_variables)
    pairs = list(zip(old.variables, new.variables))
    if len(old.variables) != len(new.variables) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in pairs
    ):
        logging.warning(
            "The optimizer state of model '%s' does not fit its copy; the copy's optimizer "
            "starts afresh.",
            source.name,
        )
        return
    for a, b in pairs:
        b.assign(a)


def compile_like(target, source, optimizer_state=False):
    """Compiles ``target`` as ``source`` is compiled; keeps a KerasHub ``sampler``.

    Loss, metrics, the optimizer's config and the other compile arguments come from
    ``source``'s compile config (a fresh optimizer, with ``source``'s moments and step
    when ``optimizer_state`` and they fit). A KerasHub ``CausalLM``'s sampler (set by
    ``compile(sampler=...)``, in no compile config) is copied. An uncompiled ``source``
    leaves ``target``'s compile as it is; so does a compile config Keras cannot rebuild
    (a warning says so).

    Args:
        target: The ``keras.Model`` to compile (a copy of ``source``).
        source: The ``keras.Model`` whose compile is copied (not modified).
        optimizer_state: Also copy the optimizer's variables.

    Returns:
        ``target``.

    Example:
        >>> inputs = keras.Input((3,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        >>> model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", metrics=["mae"])
        >>> twin = copy_model(model, compiled=False)
        >>> twin.compiled
        False
        >>> compile_like(twin, model).optimizer.get_config()["learning_rate"], twin.loss
        (0.5, 'mse')
    """
    kwargs = _compile_kwargs(source)
    if kwargs is not None:
        target.compile(**kwargs)
        if optimizer_state:
            _optimizer_state(source, target)
    sampler = _sampler_copy(source)
    if sampler is not None:
        target.sampler = sampler
    return target


def _compile_overridden(model):
    """Whether Keras's loading skips the model's compile (its class overrides it)."""
    return type(model).compile is not keras.Model.compile


def copy_model(model, what="copying", compiled=True):
    """A deep, independent copy of ``model`` (weights, states and, optionally, compile).

    Args:
        model: Any ``keras.Model`` (functional, Sequential, subclassed, KerasHub),
            patched or not, with registered custom classes or not.
        what: The operation the copy is for, used in the error message.
        compiled: Keep the compiled optimizer (with its state), loss and metrics. With
            ``False`` the copy is not compiled from the model (for a strip, whose
            optimizer state would not fit; see :func:`compile_like`), though a class
            that compiles itself when built (KerasHub tasks) still does. A KerasHub
            ``CausalLM``'s sampler is kept either way.

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
            twin = copy.deepcopy(model)
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
    if compiled and _compile_overridden(model):
        return compile_like(twin, model, optimizer_state=True)
    sampler = _sampler_copy(model)
    if sampler is not None:
        twin.sampler = sampler
    return twin
