"""A named signature of an artifact: inputs, a traceable function, outputs, a reference.

An exported file may carry several signatures (a generator's ``prefill`` and
``decode``), each with named inputs and outputs. A :class:`Signature` says what one of
them computes (``function``, traced by TensorFlow) and what it must agree with
(``reference``, run on the Keras side); the exporter converts every signature into the
one file and checks each against its reference before the file is kept.
"""

import dataclasses
import re

import numpy as np

from keras_llmopt._src.core.model_inputs import InputSpec
from keras_llmopt._src.export.signature import OUTPUT_NAME, SERVING_KEY, single_output

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_NAME_RULE = "letters, digits and underscores, starting with a letter"
DEFAULT_SAMPLES = 2
# Integer inputs of the default verification samples are drawn below this bound.
DEFAULT_INT_BOUND = 16


@dataclasses.dataclass(frozen=True)
class Signature:
    """One named signature of an exported artifact.

    Attributes:
        name: The signature key in the file (e.g. ``"serving_default"``, ``"prefill"``).
        function: TensorFlow-traceable ``function(**inputs)`` (tensors keyed by input
            name) returning a dict keyed by output name, a tuple in ``outputs`` order,
            or one tensor when there is one output. Keras layers and models called
            inside it are traced with their weights.
        inputs: The inputs, each an ``InputSpec``, a ``(name, shape, dtype)`` tuple or a
            named ``tf.TensorSpec``; every shape fully fixed.
        outputs: The output names, in order.
        reference: ``reference(**inputs)`` on numpy arrays, the Keras-side computation
            the artifact must reproduce (same return forms as ``function``).
        verification_inputs: What to verify on: a dict of arrays of the exact input
            shapes, a list of such dicts, or ``None`` for ``DEFAULT_SAMPLES`` random
            ones (``*mask`` inputs ones, other integers uniform in
            ``[0, DEFAULT_INT_BOUND)``, floats standard normal). Give your own when an
            input has a narrower valid range (positions, cache slots).
        tolerance: Optional ``{output_name: {"atol": ..., "rtol": ..., "top1": ...}}``
            overriding the export mode's tolerance for some outputs.

    Example:
        >>> import keras
        >>> dense = keras.layers.Dense(4)
        >>> signature = Signature(
        ...     name="project",
        ...     function=lambda x: {"y": dense(x)},
        ...     inputs=[("x", (1, 3), "float32")],
        ...     outputs=["y"],
        ...     reference=lambda x: {"y": keras.ops.convert_to_numpy(dense(x))},
        ... )
        >>> signature.inputs[0].shape, signature.outputs
        ((1, 3), ('y',))
    """

    name: str
    function: object
    inputs: tuple
    outputs: tuple
    reference: object
    verification_inputs: object = None
    tolerance: dict | None = None

    def __post_init__(self):
        _check_name("name", self.name)
        if not callable(self.function) or not callable(self.reference):
            raise TypeError(
                f"Signature {self.name!r}: `function` and `reference` must be callables. "
                f"Received: function={self.function!r}, reference={self.reference!r}"
            )
        inputs = tuple(_as_input_spec(self.name, spec) for spec in self.inputs)
        outputs = tuple(self.outputs)
        if not inputs or not outputs:
            raise ValueError(
                f"Signature {self.name!r} needs at least one input and one output. "
                f"Received: inputs={list(inputs)}, outputs={list(outputs)}"
            )
        for kind, names in (("input", [s.name for s in inputs]), ("output", outputs)):
            for name in names:
                _check_name(f"{kind} name of signature {self.name!r}", name)
            duplicates = sorted({n for n in names if list(names).count(n) > 1})
            if duplicates:
                raise ValueError(
                    f"Signature {self.name!r} repeats {kind} names. Received: {duplicates}"
                )
        unknown = sorted(set(self.tolerance or {}) - set(outputs))
        if unknown:
            raise ValueError(
                f"Signature {self.name!r}: `tolerance` names outputs it does not have. "
                f"Received: {unknown}; accepted: {list(outputs)}"
            )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)

    @property
    def input_names(self):
        """The input names, in order."""
        return tuple(spec.name for spec in self.inputs)

    def ordered_outputs(self, result, where):
        """``result`` (a dict, tuple or single value) as a tuple in ``outputs`` order.

        Example:
            >>> s = Signature("s", lambda x: x, [("x", (1,), "float32")], ["a", "b"],
            ...               lambda x: x)
            >>> s.ordered_outputs({"b": 2, "a": 1}, "function")
            (1, 2)
        """
        if isinstance(result, dict):
            if set(result) != set(self.outputs):
                raise ValueError(
                    f"Signature {self.name!r}: its {where} returned outputs "
                    f"{sorted(result)}. Accepted: exactly {list(self.outputs)}"
                )
            return tuple(result[name] for name in self.outputs)
        if isinstance(result, (list, tuple)):
            if len(result) != len(self.outputs):
                raise ValueError(
                    f"Signature {self.name!r}: its {where} returned {len(result)} outputs. "
                    f"Accepted: {len(self.outputs)} ({list(self.outputs)})"
                )
            return tuple(result)
        if len(self.outputs) != 1:
            raise ValueError(
                f"Signature {self.name!r}: its {where} returned one value. Accepted: a "
                f"dict or tuple of {list(self.outputs)}"
            )
        return (result,)

    def samples(self, seed=0):
        """The verification inputs as a list of dicts of arrays of the exact shapes.

        Example:
            >>> s = Signature("s", lambda x: x, [("x", (1, 2), "float32")], ["y"],
            ...               lambda x: x)
            >>> [sample["x"].shape for sample in s.samples()]
            [(1, 2), (1, 2)]
        """
        given = self.verification_inputs
        if given is None:
            rng = np.random.default_rng(seed)
            return [_random_sample(self.inputs, rng) for _ in range(DEFAULT_SAMPLES)]
        samples = [given] if isinstance(given, dict) else list(given)
        if not samples:
            raise ValueError(f"Signature {self.name!r}: `verification_inputs` is empty.")
        checked = []
        for sample in samples:
            if not isinstance(sample, dict) or set(sample) != set(self.input_names):
                keys = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
                raise ValueError(
                    f"Signature {self.name!r}: each verification input must be a dict with "
                    f"keys {sorted(self.input_names)}. Received: {keys}"
                )
            row = {}
            for spec in self.inputs:
                value = np.asarray(sample[spec.name]).astype(spec.dtype)
                if value.shape != tuple(spec.shape):
                    raise ValueError(
                        f"Signature {self.name!r}: verification input {spec.name!r} has "
                        f"shape {value.shape}. Accepted: {tuple(spec.shape)}"
                    )
                row[spec.name] = value
            checked.append(row)
        return checked


def model_signature(model, inputs):
    """The ``serving_default`` signature of a one-output Keras model over ``inputs``.

    Args:
        model: A Keras model.
        inputs: A ``ModelInputs`` with fixed shapes (or dynamic ones, for SavedModel).

    Returns:
        A ``Signature`` whose inputs are the model's (``tokens``, or ``token_ids`` and
        ``padding_mask``) and whose one output is ``"output"``.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.core.model_inputs import describe_inputs
        >>> model = reference.build_gpt("tiny")
        >>> signature = model_signature(model, describe_inputs(model, 8, 1))
        >>> signature.name, signature.input_names, signature.outputs
        ('serving_default', ('tokens',), ('output',))
    """
    import keras

    names = inputs.names

    def function(**values):
        packed = inputs.pack([values[name] for name in names])
        return {OUTPUT_NAME: single_output(model(packed, training=False))}

    def reference(**values):
        packed = inputs.pack([values[name] for name in names])
        out = single_output(model(packed, training=False))
        return {OUTPUT_NAME: keras.ops.convert_to_numpy(out)}

    return Signature(
        name=SERVING_KEY,
        function=function,
        inputs=inputs.specs,
        outputs=(OUTPUT_NAME,),
        reference=reference,
    )


def _check_name(what, name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"Invalid {what}. Received: {name!r}; accepted: {_NAME_RULE}")


def _as_input_spec(signature, spec):
    if isinstance(spec, InputSpec):
        result = spec
    elif isinstance(spec, (tuple, list)) and len(spec) == 3:
        name, shape, dtype = spec
        result = InputSpec(name, tuple(shape), str(np.dtype(dtype)))
    elif hasattr(spec, "shape") and hasattr(spec, "dtype") and getattr(spec, "name", None):
        result = InputSpec(
            spec.name, tuple(spec.shape.as_list()), np.dtype(spec.dtype.as_numpy_dtype).name
        )
    else:
        raise TypeError(
            f"Signature {signature!r}: each input must be an InputSpec, a (name, shape, "
            f"dtype) tuple or a named tf.TensorSpec. Received: {spec!r}"
        )
    shape = tuple(result.shape)
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise ValueError(
            f"Signature {signature!r}: input {result.name!r} needs a fully fixed shape. "
            f"Received: shape={shape}"
        )
    if "mask" in result.name.lower():
        result = dataclasses.replace(result, role="mask")
    return dataclasses.replace(result, shape=shape)


def _random_sample(specs, rng):
    sample = {}
    for spec in specs:
        if spec.is_mask:
            sample[spec.name] = np.ones(spec.shape, spec.dtype)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            sample[spec.name] = rng.integers(0, DEFAULT_INT_BOUND, spec.shape).astype(spec.dtype)
        else:
            sample[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
    return sample
