"""Validation of ensemble members and mixture weights, and output-kind detection."""

import math

import keras
import numpy as np

from keras_llmopt._src.ensemble import strategies

# The attribute by which a member declares its output kind ("logits" or "probabilities").
DECLARED_KIND = "declared_output_kind"


def describe(index, model):
    """``member 2 ('gpt_b')``: how errors name a member."""
    return f"member {index} ({getattr(model, 'name', type(model).__name__)!r})"


def check_models(models, owner="EnsembleModel", argument="models"):
    """Returns ``models`` as a list after checking it is a non-empty list of Keras layers."""
    if isinstance(models, keras.layers.Layer) or not hasattr(models, "__iter__"):
        raise TypeError(
            f"{owner}: `{argument}` must be a list of Keras models. Received: {argument}={models!r}"
        )
    models = list(models)
    if not models:
        raise ValueError(
            f"{owner}: `{argument}` must contain at least one Keras model. Received: {argument}=[]"
        )
    for i, model in enumerate(models):
        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                f"{owner}: {argument}[{i}] must be a Keras model or layer. "
                f"Received: {argument}[{i}]={model!r} of type {type(model).__name__}"
            )
    return models


def check_weights(weights, num_members, owner="EnsembleModel"):
    """Validates and normalizes mixture weights to a float64 numpy vector summing to 1."""
    if weights is None:
        return np.full((num_members,), 1.0 / num_members)
    try:
        values = np.asarray(weights, dtype="float64").reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{owner}: `weights` must be a list of {num_members} non-negative numbers. "
            f"Received: weights={weights!r}"
        ) from error
    if values.shape[0] != num_members:
        raise ValueError(
            f"{owner}: `weights` has {values.shape[0]} entries but there are {num_members} "
            f"members; one non-negative weight per member is expected. "
            f"Received: weights={weights!r}"
        )
    for i, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"{owner}: weight {i} must be a finite number >= 0. Received: weights={weights!r}"
            )
    if values.sum() <= 0:
        raise ValueError(f"{owner}: `weights` must not all be zero. Received: weights={weights!r}")
    return values / values.sum()


def _shape(tensor):
    return tuple(tensor.shape)


def _compatible(a, b):
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _structure(model, attribute):
    """The model's input/output structure as a tree of shapes, or None if not known."""
    try:
        tensors = getattr(model, attribute)
    except (AttributeError, ValueError):
        return None
    if tensors is None:
        return None
    return keras.tree.map_structure(_shape, tensors)


def check_shapes(models, owner="EnsembleModel"):
    """Raises ``ValueError`` unless all members share input and output shapes.

    Members whose structure is not known yet (unbuilt subclassed models) are checked
    later, on the outputs of the first call.
    """
    reference = None
    for i, model in enumerate(models):
        inputs, output = _structure(model, "input"), _structure(model, "output")
        if output is not None and not (isinstance(output, tuple) and _is_shape(output)):
            raise ValueError(
                f"{owner}: {describe(i, model)} must have a single tensor output; "
                f"its outputs have shapes {output}."
            )
        if inputs is None or output is None:
            continue
        if reference is None:
            reference = (i, model, inputs, output)
            continue
        j, first, first_inputs, first_output = reference
        if not _same_structure(inputs, first_inputs):
            raise ValueError(
                f"{owner}: {describe(i, model)} has input shape {inputs}, but "
                f"{describe(j, first)} has input shape {first_inputs}. All members must "
                "share input and output shapes."
            )
        if not _compatible(output, first_output):
            raise ValueError(
                f"{owner}: {describe(i, model)} has output shape {output}, but "
                f"{describe(j, first)} has output shape {first_output}. All members must "
                "share input and output shapes."
            )


def _is_shape(value):
    return all(v is None or isinstance(v, int) for v in value)


def _same_structure(a, b):
    try:
        keras.tree.assert_same_structure(a, b)
    except (ValueError, TypeError):
        # A shape is itself a tuple: a shape against a list of shapes is a mismatch.
        return False
    flat_a = _flatten_shapes(a)
    flat_b = _flatten_shapes(b)
    return len(flat_a) == len(flat_b) and all(_compatible(x, y) for x, y in zip(flat_a, flat_b))


def _flatten_shapes(tree):
    if isinstance(tree, tuple) and _is_shape(tree):
        return [tree]
    if isinstance(tree, dict):
        return [s for key in sorted(tree) for s in _flatten_shapes(tree[key])]
    return [s for item in tree for s in _flatten_shapes(item)]


def check_call_outputs(outputs, models, owner="EnsembleModel"):
    """Checks the members' actual outputs (covers members without a known structure)."""
    first = _shape(outputs[0])
    for i, (output, model) in enumerate(zip(outputs, models)):
        if not hasattr(output, "shape"):
            raise ValueError(
                f"{owner}: {describe(i, model)} must return a single tensor. "
                f"Received an output of type {type(output).__name__}."
            )
        if not _compatible(_shape(output), first):
            raise ValueError(
                f"{owner}: {describe(i, model)} returned shape {_shape(output)}, but "
                f"{describe(0, models[0])} returned {first}. All members must share input "
                "and output shapes."
            )


def _is_softmax(activation):
    return activation is keras.activations.softmax or (
        getattr(activation, "__name__", None) == "softmax"
    )


def _probe_inputs(model):
    """A small batch matching the model's inputs: zeros for integers, noise for floats."""
    rng = np.random.default_rng(0)

    def make(tensor):
        shape = tuple(2 if dim is None else dim for dim in tensor.shape)
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if "int" in dtype or dtype == "bool":
            return np.zeros(shape, dtype)
        return rng.uniform(size=shape).astype(dtype)

    return keras.tree.map_structure(make, model.input)


def detect_output_kind(model, index=0, owner="EnsembleModel"):
    """``"probabilities"`` or ``"logits"`` for one member.

    An ``EnsembleModel`` member is read from its ``output`` option. Otherwise a member
    outputs probabilities if its last layer is a ``Softmax`` layer or has a softmax
    activation, or if its outputs on a probe batch are non-negative and sum to one
    over the last axis. Raises ``ValueError`` if neither check can run (a subclassed model
    that has not been called yet).

    A model that knows what it returns declares it with a ``declared_output_kind`` attribute
    (``"logits"`` or ``"probabilities"``), read first and never probed; an
    ``EnsembleModel`` does, so ensembles nest.

    Example:
        >>> import keras
        >>> softmax = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
        >>> detect_output_kind(softmax)
        'probabilities'
    """
    declared = getattr(model, DECLARED_KIND, None)
    if declared in ("logits", "probabilities"):
        return declared
    layers = getattr(model, "layers", None) or [model]
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax) or _is_softmax(getattr(last, "activation", None)):
        return "probabilities"
    if _structure(model, "input") is None:
        raise ValueError(
            f"{owner}: cannot tell whether {describe(index, model)} outputs logits or "
            "probabilities: it has no known inputs to probe. Pass "
            "member_outputs='logits' or 'probabilities'. Received: member_outputs='auto'"
        )
    output = keras.ops.convert_to_numpy(model(_probe_inputs(model), training=False))
    output = output.astype("float64")
    sums = output.sum(axis=-1)
    if output.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def resolve_member_outputs(member_outputs, models, owner="EnsembleModel"):
    """Expands ``member_outputs`` (one value or one per member) to a list of kinds."""
    values = member_outputs
    if isinstance(values, str):
        values = [values] * len(models)
    values = list(values)
    if len(values) != len(models):
        raise ValueError(
            f"{owner}: `member_outputs` has {len(values)} entries but there are "
            f"{len(models)} members. Received: member_outputs={member_outputs!r}"
        )
    for value in values:
        if value not in strategies.MEMBER_OUTPUTS:
            raise ValueError(
                f"{owner}: `member_outputs` entries must be one of "
                f"{strategies.MEMBER_OUTPUTS}. Received: member_outputs={member_outputs!r}"
            )
    return [
        detect_output_kind(model, i, owner) if value == "auto" else value
        for i, (value, model) in enumerate(zip(values, models))
    ]
