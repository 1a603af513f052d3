"""What a Keras model takes: input names, dtypes, shapes, roles and sequence length.

One description serves export (the traced signature), calibration, the pipeline and the
CLI. It reads the model's declared inputs (functional and Sequential models, KerasHub
backbones and CausalLMs) or, for a subclassed model that declares none, takes one int32
``tokens`` input. The longest sequence the model accepts comes from a fixed input
length, a layer named ``position_embedding`` (a Keras ``Embedding``'s ``input_dim``, a
KerasHub ``PositionEmbedding``'s ``sequence_length``), a ``max_sequence_length``
attribute (KerasHub backbones that have one), or, for a built model with several
``Embedding`` layers and none of these, a probe: the model runs on two short inputs,
and an ``Embedding`` fed ``offset + arange(T)`` whatever the tokens is a position
table whose ``input_dim`` bounds the length. Pure Python (``keras.ops``): no TensorFlow,
so it works on every backend.
"""

import dataclasses
import weakref

import keras
import numpy as np

from keras_llmopt._src.core.hooks import capture_inputs
from keras_llmopt._src.core.layer_tree import walk_layers

TOKENS = "tokens"
MASK = "mask"
OTHER = "other"
ROLES = (TOKENS, MASK, OTHER)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input.

    Attributes:
        name: The input's name (the dict key for dict-input models).
        shape: Its shape; ``None`` marks a dynamic axis.
        dtype: Its dtype name (``"int32"``, ``"float32"``, ...).
        role: ``"tokens"`` (token ids), ``"mask"`` (a padding/attention mask) or
            ``"other"``.

    Example:
        >>> spec = InputSpec("tokens", (1, 16), "int32", role="tokens")
        >>> spec.is_tokens, spec.is_mask
        (True, False)
    """

    name: str
    shape: tuple
    dtype: str
    role: str = OTHER

    @property
    def is_tokens(self):
        """Whether this input holds token ids."""
        return self.role == TOKENS

    @property
    def is_mask(self):
        """Whether this input is a mask (ones where a token is real)."""
        return self.role == MASK


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """A model's inputs, resolved to a batch size and sequence length.

    Attributes:
        specs: One ``InputSpec`` per input, in the model's order.
        is_dict: Whether the model takes a dict keyed by input name.
        declared: Whether the model declares its inputs (``False``: a subclassed model,
            taken to have one int32 ``tokens`` input).
        max_sequence_length: The longest sequence the model accepts, or ``None`` when it
            declares no maximum (e.g. KerasHub Llama or Gemma, rotary positions).
        max_source: Where the maximum comes from, in words (for messages).
        vocabulary_size: Exclusive upper bound of valid token ids (the largest
            ``Embedding``'s ``input_dim``), or ``None`` without an embedding.

    Example:
        >>> inputs = keras.Input((8,), dtype="int32", name="tokens")
        >>> model = keras.Model(inputs, keras.layers.Embedding(10, 4)(inputs))
        >>> described = describe_inputs(model, batch_size=1)
        >>> described.names, described.sequence_length, described.token_input
        (('tokens',), 8, 'tokens')
    """

    specs: tuple
    is_dict: bool = False
    declared: bool = True
    max_sequence_length: int | None = None
    max_source: str | None = None
    vocabulary_size: int | None = None

    @property
    def names(self):
        """The input names, in order."""
        return tuple(spec.name for spec in self.specs)

    @property
    def token_input(self):
        """The name of the token-id input, or ``None`` if the model takes none."""
        return next((spec.name for spec in self.specs if spec.is_tokens), None)

    @property
    def mask_inputs(self):
        """The names of the mask inputs."""
        return tuple(spec.name for spec in self.specs if spec.is_mask)

    @property
    def sequence_length(self):
        """The fixed length of the sequence axis (axis 1), or ``None`` if dynamic.

        Taken from the token input if there is one, else from the first input with a
        second axis.
        """
        ranked = _sequence_inputs(self.specs)
        ranked.sort(key=lambda spec: not spec.is_tokens)
        if not ranked or ranked[0].shape[1] is None:
            return None
        return int(ranked[0].shape[1])

    @property
    def has_dynamic_length(self):
        """Whether any input has a dynamic axis after the batch axis."""
        return any(None in spec.shape[1:] for spec in self.specs)

    def require_fixed_length(self, what):
        """Raises ``ValueError`` naming ``sequence_length`` if a length axis is dynamic.

        Example:
            >>> model = keras.Sequential([keras.Input((None,), dtype="int32"),
            ...                           keras.layers.Embedding(10, 4)])
            >>> describe_inputs(model).require_fixed_length("to_tflite")
            Traceback (most recent call last):
            ...
            ValueError: to_tflite: ... Received: sequence_length=None ...; pass sequence_length=N
        """
        if self.has_dynamic_length:
            raise ValueError(
                f"{what}: the model's inputs have a dynamic length and it declares no "
                f"maximum. Received: sequence_length=None for inputs {list(self.names)}; "
                "pass sequence_length=N"
            )
        return self

    def pack(self, values):
        """Arranges values given in input order the way the model takes them.

        Args:
            values: A list with one value per input, in ``specs`` order.

        Returns:
            A dict keyed by input name (dict-input models), the one value (one input),
            or the list.

        Example:
            >>> inputs = ModelInputs((InputSpec("a", (1,), "int32"),), is_dict=True)
            >>> inputs.pack([3])
            {'a': 3}
        """
        values = list(values)
        if len(values) != len(self.specs):
            raise ValueError(
                f"Expected one value per input {list(self.names)}. Received: {len(values)} values"
            )
        if self.is_dict:
            return dict(zip(self.names, values))
        if len(values) == 1:
            return values[0]
        return values


def describe_inputs(model, sequence_length=None, batch_size=None, keep_dynamic=False):
    """Describes a model's inputs with the batch and sequence axes resolved.

    Args:
        model: A Keras model: functional, Sequential, subclassed (taken to have one int32
            ``tokens`` input when it declares none), a KerasHub backbone or CausalLM
            (``token_ids`` and ``padding_mask``).
        sequence_length: Length for the dynamic axes after the batch axis. ``None``: the
            model's maximum, or dynamic if it declares none (or if ``keep_dynamic``).
            Must equal a fixed input length and not exceed the model's maximum.
        batch_size: Size of the batch axis (``None`` keeps it dynamic).
        keep_dynamic: With ``sequence_length=None``, keep dynamic axes dynamic instead
            of filling in the model's maximum.

    Returns:
        A ``ModelInputs``.

    Raises:
        ValueError: ``sequence_length`` or ``batch_size`` is not a positive int, differs
            from a fixed input length, or exceeds the model's maximum.

    Example:
        >>> from keras_llmopt import reference
        >>> described = describe_inputs(reference.build_gpt("tiny"), batch_size=1)
        >>> described.specs[0].shape, described.max_source
        ((1, 64), 'position embedding')
        >>> describe_inputs(reference.build_gpt("tiny"), sequence_length=999)
        Traceback (most recent call last):
        ...
        ValueError: ... Received: sequence_length=999; accepted: at most 64 (the model's ...)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"describe_inputs expects a keras.Model. Received: model of type {type(model).__name__}"
        )
    for name, value in (("sequence_length", sequence_length), ("batch_size", batch_size)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"`{name}` must be a positive int or None. Received: {name}={value!r}")
    declared = _declared_inputs(model)
    is_dict = declared is not None and isinstance(_model_input(model), dict)
    specs = declared if declared is not None else [InputSpec("tokens", (None, None), "int32")]
    specs = _with_roles(specs)
    maximum, source = _maximum_length(model, specs)
    if sequence_length is not None:
        for spec in _sequence_inputs(specs):
            fixed = spec.shape[1] if len(spec.shape) > 1 else None
            if fixed is not None and fixed != sequence_length:
                raise ValueError(
                    f"Input {spec.name!r} has a fixed length {fixed}. Received: "
                    f"sequence_length={sequence_length}; accepted: None or {fixed}"
                )
        if maximum is not None and sequence_length > maximum:
            raise ValueError(
                f"`sequence_length` is longer than model {model.name!r} accepts. Received: "
                f"sequence_length={sequence_length}; accepted: at most {maximum} (the "
                f"model's {source})"
            )
    length = sequence_length
    if length is None and not keep_dynamic:
        length = maximum
    resolved = []
    for spec in specs:
        shape = list(spec.shape)
        if shape:
            shape[0] = batch_size
        for axis in range(1, len(shape)):
            if shape[axis] is None:
                shape[axis] = length
        resolved.append(dataclasses.replace(spec, shape=tuple(shape)))
    return ModelInputs(
        specs=tuple(resolved),
        is_dict=is_dict,
        declared=declared is not None,
        max_sequence_length=maximum,
        max_source=source,
        vocabulary_size=_vocabulary_size(model),
    )


def infer_sequence_length(model):
    """The model's fixed or maximum sequence length, or ``None`` if it declares none.

    Shorthand for ``describe_inputs(model).sequence_length``.

    Example:
        >>> from keras_llmopt import reference
        >>> infer_sequence_length(reference.build_gpt("tiny"))
        64
    """
    return describe_inputs(model).sequence_length


def _model_input(model):
    try:
        return model.input
    except (AttributeError, ValueError):
        pass
    try:  # a Sequential model started with keras.Input declares only ``inputs``
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return inputs[0] if len(inputs) == 1 else list(inputs)


def _declared_inputs(model):
    structure = _model_input(model)
    if structure is None:
        return None
    if isinstance(structure, dict):
        items = list(structure.items())
    elif isinstance(structure, (list, tuple)):
        items = [(tensor.name, tensor) for tensor in structure]
    else:
        items = [(structure.name, structure)]
    return [
        InputSpec(name=str(name), shape=tuple(tensor.shape), dtype=_dtype_name(tensor.dtype))
        for name, tensor in items
    ]


def _dtype_name(dtype):
    return keras.backend.standardize_dtype(dtype)


def _is_integer(dtype):
    return dtype.startswith(("int", "uint"))


def _with_roles(specs):
    roles = []
    for spec in specs:
        if "mask" in spec.name.lower():
            roles.append(MASK)
        elif _is_integer(spec.dtype) and "token" in spec.name.lower():
            roles.append(TOKENS)
        else:
            roles.append(OTHER)
    if TOKENS not in roles:
        # No input is named for tokens: the first integer input that is not a mask.
        for index, spec in enumerate(specs):
            if roles[index] == OTHER and _is_integer(spec.dtype) and len(spec.shape) >= 2:
                roles[index] = TOKENS
                break
    return [dataclasses.replace(spec, role=role) for spec, role in zip(specs, roles)]


def _sequence_inputs(specs):
    """The inputs whose axis 1 is the sequence: token ids and masks, else every input."""
    ranked = [s for s in specs if len(s.shape) > 1]
    if any(s.is_tokens for s in ranked):
        return [s for s in ranked if s.is_tokens or s.is_mask]
    return ranked


def _maximum_length(model, specs):
    """``(length, source)``: the longest sequence the model takes, or ``(None, None)``."""
    for spec in _sequence_inputs(specs):
        if spec.shape[1] is not None:
            return int(spec.shape[1]), f"fixed {spec.name!r} input length"
    for node in walk_layers(model):
        layer = node.layer
        if not layer.name.endswith("position_embedding"):
            continue
        for attribute in ("input_dim", "sequence_length"):
            length = getattr(layer, attribute, None)
            if isinstance(length, int) and not isinstance(length, bool) and length > 0:
                return length, "position embedding"
    for owner in (model, getattr(model, "backbone", None)):
        length = getattr(owner, "max_sequence_length", None)
        if isinstance(length, int) and not isinstance(length, bool) and length > 0:
            return length, "max_sequence_length attribute"
    return _probed_position_limit(model, specs)


# model -> (length, source) found by the probe (a model's layers do not change).
_PROBED = weakref.WeakKeyDictionary()
_PROBE_LENGTHS = (3, 4)


def _probed_position_limit(model, specs):
    """``(length, source)`` from an ``Embedding`` fed positions, found by running the model.

    Only a built model with two or more ``Embedding`` layers is probed (running it does
    not change it); the result is kept per model. A model the probe cannot run on its
    sample inputs has no maximum, as before.
    """
    embeddings = {
        node.path: node.layer
        for node in walk_layers(model)
        if isinstance(node.layer, keras.layers.Embedding)
    }
    if not model.built or len(embeddings) < 2:
        return None, None
    try:
        return _PROBED[model]
    except (KeyError, TypeError):
        pass
    found = (None, None)
    try:
        offsets = [_position_offsets(model, specs, embeddings, n) for n in _PROBE_LENGTHS]
        limits = [
            (embeddings[path].input_dim - offset, path)
            for path, offset in offsets[0].items()
            if offsets[1].get(path) == offset and embeddings[path].input_dim > offset
        ]
        if limits:
            length, path = min(limits)
            found = (int(length), f"position embedding {path!r}")
    except Exception:  # a model the probe cannot run keeps "no declared maximum"
        found = (None, None)
    try:
        _PROBED[model] = found
    except TypeError:
        pass
    return found


def _position_offsets(model, specs, embeddings, length):
    """``{path: offset}`` of the embeddings called with ``offset + arange(length)``."""
    smallest = min(layer.input_dim for layer in embeddings.values())
    token = 1 if smallest > 1 else 0  # the same id everywhere: token lookups are flat
    values = []
    for spec in specs:
        shape = [1] + [length if axis == 1 else (d or 1) for axis, d in enumerate(spec.shape)][1:]
        fill = token if spec.is_tokens else (1 if spec.is_mask else 0)
        values.append(keras.ops.full(shape, fill, dtype=spec.dtype))
    if isinstance(_model_input(model), dict):
        feeds = dict(zip((spec.name for spec in specs), values))
    else:
        feeds = values[0] if len(values) == 1 else values
    with capture_inputs(embeddings) as captured:
        model(feeds, training=False)
    offsets = {}
    for path, record in captured.items():
        calls = [np.asarray(keras.ops.convert_to_numpy(x)) for x in record.first_inputs]
        if not calls or any(c.shape[-1:] != (length,) for c in calls):
            continue
        rows = np.concatenate([c.reshape(-1, length) for c in calls])
        offset = int(rows[0, 0])
        if np.array_equal(rows, np.broadcast_to(offset + np.arange(length), rows.shape)):
            offsets[path] = offset
    return offsets


def _vocabulary_size(model):
    sizes = [
        int(node.layer.input_dim)
        for node in walk_layers(model)
        if isinstance(node.layer, keras.layers.Embedding)
    ]
    return max(sizes) if sizes else None
