"""Every access to Keras internals, in one file, so a Keras upgrade is audited here.

keras_llmopt patches built layers in place (state sub-layers, intercepted calls,
swapped weights), walks layer trees, serializes patched models and rewrites
attention for quantization. Keras 3 has public APIs for most of it; where it has
none, the private name is read here and nowhere else. Checked against Keras 3.15.1
(the pinned version); ``tests/core/test_keras_compat.py`` exercises every entry.
"""

import contextlib

import keras
from keras.src.backend.common import global_state
from keras.src.layers.convolutional.base_conv import BaseConv
from keras.src.models.functional import Functional
from keras.src.saving import object_registration, serialization_lib

__all__ = [
    "BaseConv",
    "Functional",
    "attention_internals",
    "call_has_training_arg",
    "child_layers",
    "compute_output_spec",
    "current_call_training",
    "graph_of",
    "graph_nodes",
    "graph_operations",
    "is_plain_graph_model",
    "keras_calibration_sampler",
    "keras_mask",
    "operation_name",
    "producer_of",
    "run_graph",
    "own_variables",
    "public_class_config",
    "register_serialized_name",
    "tracked_sublayers",
    "unlocked_tracker",
]

# The attribute of ``keras.layers.MultiHeadAttention`` that computes attention from
# the projected query, key and value; quantization replaces it on the instance.
COMPUTE_ATTENTION_ATTR = "_compute_attention"


def child_layers(layer):
    """The direct sub-layers Keras tracks for ``layer``, in order.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        >>> [child.name for child in child_layers(model)][-1]
        'd'
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def current_call_training():
    """The ``training`` value of the enclosing Keras layer call (``None`` outside one).

    Example:
        >>> current_call_training() is None
        True
    """
    context = global_state.get_global_attribute("current_call_ctx")
    if context is None:
        return None
    if hasattr(context, "get_value"):
        return context.get_value("training")
    return getattr(context, "training", None)


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Lets a built layer take new state (sub-layers, variables) inside the block.

    Example:
        >>> layer = keras.layers.Dense(2)
        >>> layer.build((None, 3))
        >>> with unlocked_tracker(layer):
        ...     layer.extra = keras.layers.Layer()
    """
    tracker = getattr(layer, "_tracker", None)
    was_locked = bool(tracker is not None and tracker.locked)
    if was_locked:
        tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            tracker.lock(
                "You cannot add new elements of state (variables or sub-layers) to a layer "
                "that is already built."
            )


def tracked_sublayers(layer):
    """The list Keras keeps a layer's sub-layers in (mutable; ``[]`` if it has none).

    Example:
        >>> dense = keras.layers.Dense(2)
        >>> tracked_sublayers(dense)
        []
    """
    sublayers = getattr(layer, "_layers", None)
    return sublayers if sublayers is not None else []


def own_variables(layer):
    """The variables created by ``layer`` itself (its sub-layers' left out).

    Example:
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 3))
        >>> [v.name for v in own_variables(dense)]
        ['kernel', 'bias']
    """
    return list(getattr(layer, "_trainable_variables", [])) + list(
        getattr(layer, "_non_trainable_variables", [])
    )


def call_has_training_arg(layer):
    """Whether ``layer.call`` takes a ``training`` argument (Keras passes it on if so).

    Example:
        >>> call_has_training_arg(keras.layers.Dropout(0.1))
        True
    """
    return bool(getattr(layer, "_call_has_training_arg", True))


def compute_output_spec(layer, *args, **kwargs):
    """Runs ``layer`` symbolically (builds it from the real arguments, no compute).

    Example:
        >>> spec = compute_output_spec(keras.layers.Dense(2), keras.KerasTensor((1, 3)))
        >>> tuple(spec.shape)
        (1, 2)
    """
    return keras.src.backend.compute_output_spec(layer, *args, **kwargs)


def is_plain_graph_model(model):
    """Whether ``model`` is exactly a functional or Sequential model (rebuildable by clone).

    Example:
        >>> is_plain_graph_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        True
    """
    return type(model) in (Functional, keras.Sequential)


def public_class_config(cls, inner_config):
    """A serialized ``{"module", "class_name", "config", "registered_name"}`` for ``cls``.

    Example:
        >>> public_class_config(keras.Sequential, {"layers": []})["class_name"]
        'Sequential'
    """
    return serialization_lib.serialize_with_public_class(cls, inner_config) or {
        "module": cls.__module__,
        "class_name": cls.__name__,
        "config": inner_config,
        "registered_name": object_registration.get_registered_name(cls),
    }


def register_serialized_name(cls, name):
    """Makes Keras serialize instances of ``cls`` under the registered ``name``.

    Example:
        >>> class Mine(keras.layers.Layer):
        ...     pass
        >>> register_serialized_name(Mine, "tests>Mine")
    """
    object_registration.GLOBAL_CUSTOM_NAMES[cls] = name


def keras_calibration_sampler():
    """Keras's own GPTQ/AWQ calibration sampler (``gptq_core.get_dataloader``), or None.

    Used to hand Keras's native GPTQ/AWQ exactly the calibration windows our passes
    see; ``None`` when a Keras release has moved it.

    Example:
        >>> callable(keras_calibration_sampler())
        True
    """
    try:
        from keras.src.quantizers.gptq_core import get_dataloader
    except ImportError:
        return None
    return get_dataloader


class attention_internals:  # noqa: N801  (a namespace of accessors, used as such)
    """The private pieces of ``keras.layers.MultiHeadAttention`` quantized attention uses.

    Example:
        >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
        >>> _ = mha(keras.ops.ones((1, 3, 8)), keras.ops.ones((1, 3, 8)))
        >>> attention_internals.dot_product_equation(mha)
        'aecd,abcd->acbe'
    """

    @staticmethod
    def attention_axes(layer):
        """The axes attention runs over."""
        return layer._attention_axes

    @staticmethod
    def inverse_sqrt_key_dim(layer):
        """``1 / sqrt(key_dim)``, the query scale."""
        return layer._inverse_sqrt_key_dim

    @staticmethod
    def causal_mask(layer, query, value):
        """The causal mask for ``query`` attending to ``value``."""
        return layer._compute_causal_mask(query, value)

    @staticmethod
    def dot_product_equation(layer):
        """The einsum equation of the scores."""
        return layer._dot_product_equation

    @staticmethod
    def combine_equation(layer):
        """The einsum equation of probabilities times values."""
        return layer._combine_equation

    @staticmethod
    def softmax(layer, scores):
        """The layer's masked softmax over several attention axes."""
        return layer._softmax(scores)

    @staticmethod
    def dropout_rate(layer):
        """The attention dropout rate."""
        return layer._dropout

    @staticmethod
    def dropout(layer, probs, training):
        """The layer's attention dropout."""
        return layer._dropout_layer(probs, training=training)

    @staticmethod
    def projections(layer):
        """``{"query", "key", "value", "output"}`` projection sub-layers present."""
        found = {}
        for name in ("query", "key", "value", "output"):
            sub = getattr(layer, f"_{name}_dense", None)
            if isinstance(sub, keras.layers.Layer):
                found[name] = sub
        return found


def graph_of(model):
    """The functional graph a model runs (a Sequential's inner one), or ``None``.

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> graph_of(model) is not None
        True
    """
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if isinstance(model, Functional) else None


def graph_operations(graph):
    """``[(operation, input KerasTensors)]`` of every node of a functional graph.

    Example:
        >>> inputs = keras.Input((3,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
        >>> [op.name for op, _ in graph_operations(model)]
        ['d']
    """
    found = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                found.append((node.operation, list(node.input_tensors)))
    return found


def graph_nodes(graph):
    """``[(operation, input KerasTensors, output KerasTensors)]`` in execution order.

    Example:
        >>> inputs = keras.Input((3,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
        >>> [(op.name, len(ins), len(outs)) for op, ins, outs in graph_nodes(model)]
        [('d', 1, 1)]
    """
    found = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                found.append((node.operation, list(node.input_tensors), list(node.outputs)))
    return found


def producer_of(tensor):
    """The operation that produced a KerasTensor (``None`` for a graph input).

    Example:
        >>> x = keras.Input((3,))
        >>> producer_of(keras.ops.ones_like(x)).__class__.__name__
        'OnesLike'
    """
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None)
    return None if isinstance(operation, keras.layers.InputLayer) else operation


def operation_name(operation):
    """The class name of a graph operation (``"Cumsum"``, ``"OnesLike"``, ``"Dense"``).

    Example:
        >>> operation_name(keras.layers.Dense(2))
        'Dense'
    """
    return type(operation).__name__


def run_graph(graph, inputs, operation_fn):
    """Runs a functional graph with each operation replaced by ``operation_fn(op)``.

    Example:
        >>> inputs = keras.Input((3,))
        >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        >>> tuple(run_graph(model, keras.ops.ones((1, 3)), lambda op: op).shape)
        (1, 2)
    """
    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def keras_mask(tensor):
    """The Keras mask a tensor carries (``mask_zero`` embeddings), or ``None``.

    Example:
        >>> keras_mask(keras.ops.ones((2,))) is None
        True
    """
    return getattr(tensor, "_keras_mask", None)
