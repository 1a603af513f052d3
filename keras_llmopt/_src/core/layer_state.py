"""Attaching state to a built layer, and reading a call's ``training`` flag.

Shared by in-place pruning, quantization and clustering, which all patch a
user's layer on a copy of the model.
"""

from keras.src.backend.common import global_state


def is_training(training):
    """Python truthiness of a ``training`` argument (``None`` and symbolic tensors: False).

    Example:
        >>> is_training(None), is_training(True), is_training(0)
        (False, True, False)
    """
    if training is None:
        return False
    try:
        return bool(training)
    except Exception:  # a symbolic tensor: only an explicit training call counts
        return False


def call_training(kwargs):
    """Whether a call trains: its ``training`` argument, else the enclosing call's.

    Example:
        >>> call_training({"training": True}), call_training({})
        (True, False)
    """
    training = kwargs.get("training")
    if training is None:
        context = global_state.get_global_attribute("current_call_ctx")
        if context is not None and hasattr(context, "get_value"):
            training = context.get_value("training")
        else:
            training = getattr(context, "training", None)
    return is_training(training)


def set_tracked(layer, name, value):
    """Sets (``value``) or removes (``None``) a tracked sub-layer of a built layer.

    The layer's tracker is unlocked for the change and locked again after.

    Example:
        >>> import keras
        >>> layer = keras.layers.Dense(2)
        >>> layer.build((None, 3))
        >>> set_tracked(layer, "extra", keras.layers.Layer())
        >>> set_tracked(layer, "extra", None)
        >>> hasattr(layer, "extra")
        False
    """
    tracker = getattr(layer, "_tracker", None)
    was_locked = bool(tracker is not None and tracker.locked)
    if was_locked:
        tracker.unlock()
    try:
        if value is None:
            old = getattr(layer, name)
            delattr(layer, name)
            sublayers = getattr(layer, "_layers", [])
            for i, sub in enumerate(list(sublayers)):
                if sub is old:
                    del sublayers[i]
                    break
        else:
            setattr(layer, name, value)
            sublayers = getattr(layer, "_layers", None)
            if sublayers is not None and not any(sub is value for sub in sublayers):
                sublayers.append(value)  # the tracker skips objects it has seen before
    finally:
        if was_locked:
            tracker.lock(
                "You cannot add new elements of state (variables or sub-layers) to a layer "
                "that is already built."
            )
