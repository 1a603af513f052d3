"""Attaching state to a built layer, and reading a call's ``training`` flag.

Shared by in-place pruning, quantization and clustering, which all patch a
user's layer on a copy of the model.
"""

from keras_llmopt._src.core import keras_compat


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
        training = keras_compat.current_call_training()
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
    with keras_compat.unlocked_tracker(layer):
        sublayers = keras_compat.tracked_sublayers(layer)
        if value is None:
            old = getattr(layer, name)
            delattr(layer, name)
            for i, sub in enumerate(list(sublayers)):
                if sub is old:
                    del sublayers[i]
                    break
        else:
            setattr(layer, name, value)
            if not any(sub is value for sub in sublayers):
                sublayers.append(value)  # the tracker skips objects it has seen before
