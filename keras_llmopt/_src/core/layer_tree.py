"""Walks a Keras model's layer tree and finds the weights an optimisation can touch.

Shared by pruning, quantization and clustering. Two jobs:

* :func:`walk_layers` yields every layer of a model (functional, Sequential,
  subclassed, nested custom layers, KerasHub backbones) with a ``/``-joined path
  of layer names, each layer once.
* :func:`find_weights` returns, for one layer, its "optimisable" weights from a
  user-extensible table that maps layer types (``isinstance``) to weight
  attribute names plus the axes of each weight that run along the layer's
  *input* dimension (the axes N:M groups and per-input statistics use).
"""

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence

import keras

from keras_llmopt._src.core import keras_compat

InputAxesFn = Callable[[keras.layers.Layer, tuple], tuple]


@dataclasses.dataclass(frozen=True)
class LayerNode:
    """One layer of a model's tree.

    Attributes:
        path: ``/``-joined layer names from the root (the root itself excluded).
        layer: The layer object.
        parent: The layer that holds it (the root model for top-level layers).
        depth: 1 for top-level layers.
    """

    path: str
    layer: keras.layers.Layer
    parent: keras.layers.Layer | None
    depth: int


@dataclasses.dataclass(frozen=True)
class WeightRef:
    """A weight of a layer that an optimisation can act on.

    Attributes:
        name: Public attribute name, e.g. ``"kernel"`` or ``"embeddings"``.
        variable: The ``keras.Variable``.
        storage_attr: The instance attribute of the layer that holds the
            variable (``"_kernel"`` for Dense, ``"kernel"`` for Conv). It is
            discovered by identity, never hard-coded.
        input_axes: Axes of the weight that run along the layer's input.
    """

    name: str
    variable: keras.Variable
    storage_attr: str
    input_axes: tuple

    @property
    def shape(self):
        """The weight's shape as a tuple."""
        return tuple(self.variable.shape)


def _children(layer):
    return keras_compat.child_layers(layer)


def walk_layers(model) -> Iterator[LayerNode]:
    """Yields every layer under ``model`` depth-first, each once, with its path.

    Args:
        model: A ``keras.Model`` or ``keras.layers.Layer``.

    Yields:
        :class:`LayerNode` objects; a parent is yielded before its children.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        >>> [node.path for node in walk_layers(model)][-1]
        'd'
    """
    seen = {id(model)}

    def visit(layer, prefix, depth):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            yield LayerNode(path, child, layer, depth)
            yield from visit(child, path, depth + 1)

    yield from visit(model, "", 1)


def get_layer_by_path(model, path: str):
    """Returns the layer at ``path`` (as produced by :func:`walk_layers`).

    Args:
        model: The root model or layer.
        path: A ``/``-joined path. ``""`` returns ``model`` itself.

    Returns:
        The layer.

    Raises:
        ValueError: If no layer has that path.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        >>> get_layer_by_path(model, "d").name
        'd'
    """
    if not path:
        return model
    for node in walk_layers(model):
        if node.path == path:
            return node.layer
    raise ValueError(f"No layer at path {path!r} in {model.name!r}. Received: path={path!r}")


# ---------------------------------------------------------------------------
# Table of optimisable weights: layer type -> weight attribute names + input axes.


def _dense_input_axes(layer, shape):
    return tuple(range(len(shape) - 1))


def einsum_parts(layer):
    """``(inputs, kernel, output)`` subscripts of an EinsumDense's equation, or ``None``.

    The one parser of EinsumDense equations (pruning's input axes, quantization's
    output axes and dense view all read it).

    Example:
        >>> import keras
        >>> einsum_parts(keras.layers.EinsumDense("abc,cde->abde", (None, 2, 4)))
        ('abc', 'cde', 'abde')
    """
    equation = getattr(layer, "equation", "").replace(" ", "")
    match = re.fullmatch(r"([a-zA-Z.]+),([a-zA-Z.]+)->([a-zA-Z.]+)", equation)
    return match.groups() if match else None


def _einsum_input_axes(layer, shape):
    parts = einsum_parts(layer)
    if parts is None:
        return (0,)
    inputs, kernel, _ = parts
    axes = tuple(i for i, letter in enumerate(kernel) if letter in inputs)
    return axes or (0,)


def _conv_input_axes(layer, shape):
    return (len(shape) - 2,)


def _embedding_input_axes(layer, shape):
    return (len(shape) - 1,)


@dataclasses.dataclass
class _TableEntry:
    layer_type: type
    weight_names: tuple
    input_axes: InputAxesFn


_TABLE: list[_TableEntry] = []


def register_weights(
    layer_type: type,
    weight_names: Sequence[str],
    input_axes: InputAxesFn | None = None,
):
    """Declares which weights of a layer type can be pruned/quantized/clustered.

    Entries are matched with ``isinstance`` and the most recently registered
    matching entry wins, so registering a subclass overrides its base class.

    Args:
        layer_type: A ``keras.layers.Layer`` subclass.
        weight_names: Public attribute names of the weights (e.g. ``["kernel"]``).
        input_axes: ``fn(layer, weight_shape) -> tuple`` of the weight's axes
            that run along the input dimension. Defaults to all but the last
            axis (the Dense convention ``(in, out)``).

    Raises:
        TypeError: If ``layer_type`` is not a Layer subclass.

    Example:
        >>> import keras
        >>> class Scale(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.w = self.add_weight(shape=(shape[-1], shape[-1]))
        ...     def call(self, x):
        ...         return x @ self.w
        >>> register_weights(Scale, ["w"])
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, keras.layers.Layer)):
        raise TypeError(
            "`layer_type` must be a keras.layers.Layer subclass. "
            f"Received: layer_type={layer_type!r}"
        )
    if isinstance(weight_names, str):
        weight_names = [weight_names]
    _TABLE.append(_TableEntry(layer_type, tuple(weight_names), input_axes or _dense_input_axes))


def _register_defaults():
    register_weights(keras.layers.Dense, ["kernel"], _dense_input_axes)
    register_weights(keras.layers.EinsumDense, ["kernel"], _einsum_input_axes)
    register_weights(keras_compat.BaseConv, ["kernel"], _conv_input_axes)
    register_weights(keras.layers.Embedding, ["embeddings"], _embedding_input_axes)


_register_defaults()


def table_entry(layer):
    """Returns the registered entry for ``layer`` (last matching wins) or ``None``."""
    for entry in reversed(_TABLE):
        if isinstance(layer, entry.layer_type):
            return entry
    return None


def is_registered(layer) -> bool:
    """Whether ``layer``'s type has an entry in the weight table.

    Example:
        >>> import keras
        >>> is_registered(keras.layers.Dense(2))
        True
    """
    return table_entry(layer) is not None


def storage_attr_of(layer, variable) -> str | None:
    """Finds the instance attribute of ``layer`` whose value *is* ``variable``."""
    for attr, value in vars(layer).items():
        if value is variable:
            return attr
    return None


def find_weights(layer) -> tuple[list[WeightRef], str | None]:
    """Returns the optimisable weights of one layer, or why there are none.

    Args:
        layer: A built Keras layer.

    Returns:
        ``(weights, reason)``: a list of :class:`WeightRef` and ``None``, or an
        empty list and a human-readable reason ("no prunable weights",
        "not built", "weight 'kernel' is not a float variable (quantized?)").

    Example:
        >>> import keras
        >>> layer = keras.layers.Dense(3)
        >>> layer.build((None, 4))
        >>> weights, reason = find_weights(layer)
        >>> [(w.name, w.shape) for w in weights], reason
        ([('kernel', (4, 3))], None)
    """
    entry = table_entry(layer)
    if entry is None:
        return [], "no prunable weights (type not in the weight table)"
    if not layer.built:
        return [], "layer is not built"
    found = []
    for name in entry.weight_names:
        try:
            variable = getattr(layer, name)
        except Exception:  # property that raises on an unsupported mode
            variable = None
        if not isinstance(variable, keras.Variable):
            return [], f"weight {name!r} is not a variable (quantized or LoRA layer?)"
        if "float" not in str(variable.dtype):
            return [], f"weight {name!r} has dtype {variable.dtype} (quantized?)"
        attr = storage_attr_of(layer, variable)
        if attr is None:
            return [], f"weight {name!r} is not stored in an attribute of the layer"
        axes = tuple(a % len(variable.shape) for a in entry.input_axes(layer, variable.shape))
        found.append(WeightRef(name, variable, attr, axes))
    return found, None
