"""Layer state: one technique's variables installed on a built layer, and its call intercepted.

Every technique that changes a layer in place (pruning masks, fake quantization,
clustering codebooks, a user's own) keeps its variables in a :class:`LayerState`:
a tracked sub-layer of the patched layer, so ``fit``, ``save_weights``, checkpoints
and distribution strategies carry them. A layer may hold several states (pruned
*and* quantized); its ``call`` is replaced once, on the instance, by an
interceptor that, per call:

1. lets each state update itself in-graph (``before_call``: pruning masks);
2. chains the states' weight transforms in ``order`` (mask, then codebook, then fake
   quantization), starting from the weight variable;
3. runs the layer: a state may compute the call itself from the transformed values
   (``compute``: quantized Dense/EinsumDense, with no attribute swapped while an
   observer updates), else the transformed values are swapped into the layer's
   weight attributes around its own ``call`` (restored in ``finally``);
4. passes the outputs through each state's ``transform_outputs``.

:func:`remove` takes a state off (the interceptor goes with the last one), and
``core.saving`` saves and loads any mix of states through the technique registry.
"""

import contextlib

import keras

from keras_llmopt._src.core import keras_compat

STATE_ATTR_PREFIX = "_llmopt_state_"
_ORIGINAL_CALL_ATTR = "_llmopt_original_call"


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


class LayerState(keras.layers.Layer):
    """Base class of a technique's state on one layer (holds variables; never called).

    Subclasses set ``technique`` (the registry name) and ``order`` (weight
    transforms run in ascending order: pruning 10, clustering 20, quantization 30),
    create their variables in a ``setup`` method of their own, and override the
    hooks they need. Everything runs inside the compiled train step.

    Example:
        >>> import keras
        >>> class Doubled(LayerState):
        ...     technique = "doubled"
        ...     def weight_attrs(self):
        ...         return [self.attr]
        ...     def transform_weight(self, attr, value, training):
        ...         return value * 2.0
        >>> dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
        >>> dense.build((None, 2))
        >>> state = Doubled()
        >>> state.attr = "_kernel"
        >>> install(dense, state)
        >>> float(dense(keras.ops.ones((1, 2)))[0, 0])
        4.0
        >>> _ = remove(dense, "doubled")
        >>> float(dense(keras.ops.ones((1, 2)))[0, 0])
        2.0
    """

    technique = None
    order = 50

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        object.__setattr__(self, "_owner", lambda: None)
        self.built = True

    # -- hooks ------------------------------------------------------------------

    def weight_attrs(self):
        """Attribute names of the owner's weights this state transforms."""
        return []

    def before_call(self, training):
        """In-graph updates before the call (e.g. recomputing pruning masks)."""

    def transform_weight(self, attr, value, training):
        """The value the layer computes with for weight ``attr`` (given the chain so far)."""
        return value

    def transform_inputs(self, layer, args, kwargs, training):
        """``(args, kwargs)`` the layer is called with (e.g. a fake-quantized input)."""
        return args, kwargs

    def call_scope(self, layer, training):
        """A context manager entered around the layer's computation (default: none)."""
        return contextlib.nullcontext()

    def attribute_overrides(self, layer, training):
        """Other attributes swapped in around the original call (e.g. wrapped activations)."""
        return {}

    def compute(self, layer, values, training):
        """A function computing the call from ``values`` itself, or ``None`` (the default).

        ``values`` maps weight attributes to their transformed tensors.
        """
        return None

    def transform_outputs(self, layer, outputs, call_kwargs, training):
        """The layer's outputs after this state (e.g. fake-quantized)."""
        return outputs

    def on_install(self, layer):
        """Called once the state is on ``layer`` (e.g. freezing a replaced weight)."""

    def on_remove(self, layer):
        """Called when the state is taken off ``layer`` (undo :meth:`on_install`)."""

    def baked_weights(self, values):
        """``{attr: value}``: what stripping writes into the owner's weight variables.

        ``values`` maps each of :meth:`weight_attrs` to the weight as the states
        before this one leave it (the variable itself when there are none).
        """
        return {}

    def record(self):
        """Plain data (JSON) from which the technique re-creates this state when loading."""
        return {}

    # -- plumbing ---------------------------------------------------------------

    def get_owner(self):
        """The layer this state is installed on."""
        return self._owner()

    def call(self, *args, **kwargs):
        raise RuntimeError(
            f"{type(self).__name__} holds variables only; it is not meant to be called."
        )


def state_attr(technique):
    """The attribute of a patched layer holding ``technique``'s state.

    Example:
        >>> state_attr("pruning")
        '_llmopt_state_pruning'
    """
    return STATE_ATTR_PREFIX + technique


def states_of(layer):
    """The states installed on ``layer``, in transform order.

    Example:
        >>> import keras
        >>> states_of(keras.layers.Dense(2))
        []
    """
    found = [
        value
        for name, value in vars(layer).items()
        if name.startswith(STATE_ATTR_PREFIX) and isinstance(value, LayerState)
    ]
    return sorted(found, key=lambda state: state.order)


def reapply_outputs(layer, tensor, training=False):
    """``tensor`` passed through ``layer``'s states' output transforms, as if it had output it.

    A KV cache holds outputs of the key and value projections written step by step;
    reapplying the projection's output transforms (QAT fake quantization: idempotent
    on values already on its grid) gives the tensor read back from the cache the same
    quantization range, so an integer export keeps the attention matmuls integer.

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(2)
        >>> tuple(reapply_outputs(dense, keras.ops.ones((1, 2))).shape)
        (1, 2)
    """
    for state in states_of(layer):
        tensor = state.transform_outputs(layer, tensor, {"training": training}, training)
    return tensor


def get_state(layer, technique):
    """The state of ``technique`` on ``layer``, or ``None``.

    Example:
        >>> import keras
        >>> get_state(keras.layers.Dense(2), "pruning") is None
        True
    """
    value = vars(layer).get(state_attr(technique))
    return value if isinstance(value, LayerState) else None


def find_states(model, technique=None):
    """``[(path, state)]`` of every state under ``model`` (of one technique, or all).

    Example:
        >>> import keras
        >>> find_states(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        []
    """
    from keras_llmopt._src.core import layer_tree

    found = []
    for node in layer_tree.walk_layers(model):
        if isinstance(node.layer, LayerState):
            continue
        for state in states_of(node.layer):
            if technique is None or state.technique == technique:
                found.append((node.path, state))
    return found


def install(layer, state):
    """Puts ``state`` on the built ``layer`` and makes the layer's call go through it.

    Raises:
        TypeError: ``state`` is not a :class:`LayerState` or has no ``technique``.
        ValueError: The layer already holds a state of that technique.
    """
    if not isinstance(state, LayerState) or not state.technique:
        raise TypeError(
            "`state` must be a LayerState subclass instance with a `technique` name. "
            f"Received: state={state!r}"
        )
    if get_state(layer, state.technique) is not None:
        raise ValueError(
            f"Layer '{layer.name}' already carries {state.technique!r}; strip it first. "
            f"Received: a second {type(state).__name__}"
        )
    object.__setattr__(state, "_owner", lambda: layer)
    set_tracked(layer, state_attr(state.technique), state)
    if _ORIGINAL_CALL_ATTR not in vars(layer):
        object.__setattr__(layer, _ORIGINAL_CALL_ATTR, layer.call)
        object.__setattr__(layer, "call", _interceptor(layer))
    state.on_install(layer)


def remove(layer, technique):
    """Takes ``technique``'s state off ``layer``; returns it (or ``None`` if absent).

    The layer's own ``call`` comes back when its last state goes.
    """
    state = get_state(layer, technique)
    if state is None:
        return None
    state.on_remove(layer)
    set_tracked(layer, state_attr(technique), None)
    if not states_of(layer) and _ORIGINAL_CALL_ATTR in vars(layer):
        object.__delattr__(layer, "call")
        object.__delattr__(layer, _ORIGINAL_CALL_ATTR)
    return state


def _interceptor(layer):
    def intercepted_call(*args, **kwargs):
        original = vars(layer)[_ORIGINAL_CALL_ATTR]
        states = states_of(layer)
        training = call_training(kwargs)
        for state in states:
            state.before_call(training)
        values = {}
        for state in states:
            for attr in state.weight_attrs():
                current = values[attr] if attr in values else getattr(layer, attr)
                values[attr] = state.transform_weight(attr, current, training)
        for state in states:
            args, kwargs = state.transform_inputs(layer, args, kwargs, training)
        compute = None
        for state in states:
            compute = state.compute(layer, values, training) or compute
        with contextlib.ExitStack() as scopes:
            for state in states:
                scopes.enter_context(state.call_scope(layer, training))
            if compute is not None:
                outputs = compute(*args, **kwargs)
            else:
                overrides = dict(values)
                for state in states:
                    overrides.update(state.attribute_overrides(layer, training))
                with swapped_attributes(layer, overrides):
                    outputs = original(*args, **kwargs)
        for state in states:
            outputs = state.transform_outputs(layer, outputs, kwargs, training)
        return outputs

    return intercepted_call


@contextlib.contextmanager
def swapped_attributes(obj, values):
    """Within the block, ``obj``'s attributes hold ``values``; restored in ``finally``.

    Example:
        >>> class Box:
        ...     x = 1
        >>> box = Box()
        >>> with swapped_attributes(box, {"x": 2}):
        ...     box.x
        2
        >>> box.x
        1
    """
    saved = []
    try:
        for attr, value in values.items():
            saved.append((attr, vars(obj).get(attr, _MISSING)))
            object.__setattr__(obj, attr, value)
        yield
    finally:
        for attr, original in reversed(saved):
            if original is _MISSING:
                object.__delattr__(obj, attr)
            else:
                object.__setattr__(obj, attr, original)


_MISSING = object()
