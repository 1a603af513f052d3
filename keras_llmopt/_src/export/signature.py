"""Fixed-shape serving functions over a Keras model, and their frozen graphs.

The TFLite converter, given a Keras 3 model's concrete function, keeps the weights as
resource variables (``VAR_HANDLE``/``READ_VARIABLE``) that are never initialised in
the ``.tflite``: the file is a few KB and the model outputs NaN. Freezing the function
ourselves (variables -> constants) before conversion gives complete artifacts.

The model's inputs are described once, in ``core/model_inputs.py``; this module only
traces them.
"""

import keras
import numpy as np

from keras_llmopt._src.core.model_inputs import InputSpec  # noqa: F401  (re-exported)

SERVING_KEY = "serving_default"
OUTPUT_NAME = "output"


def require_tensorflow(what):
    """Raises unless Keras runs on TensorFlow (export is TensorFlow's job).

    Example:
        >>> require_tensorflow("to_tflite")
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow backend (set KERAS_BACKEND=tensorflow). "
            f"Received: backend={backend!r}"
        )


def tensor_specs(specs):
    """``tf.TensorSpec`` s named after ``InputSpec`` s (the traced signature's inputs).

    Example:
        >>> tensor_specs([InputSpec("tokens", (1, 8), "int32")])[0].name
        'tokens'
    """
    import tensorflow as tf

    return [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in specs]


def serving_function(model, inputs):
    """A ``tf.function`` over ``inputs`` (a ``ModelInputs``) returning ``{"output": y}``.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.core.model_inputs import describe_inputs
        >>> model = reference.build_gpt("tiny")
        >>> serve = serving_function(model, describe_inputs(model, 8, 1))
        >>> serve.input_signature[0].shape.as_list()
        [1, 8]
    """
    import tensorflow as tf

    def serve(*flat):
        return {OUTPUT_NAME: single_output(model(inputs.pack(flat), training=False))}

    return tf.function(serve, input_signature=tensor_specs(inputs.specs), autograph=False)


def single_output(outputs):
    """The one output tensor of a model (a dict or list of one is unwrapped).

    Example:
        >>> single_output({"logits": 1})
        1
    """
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(
                "Export needs a model with one output. Received: outputs named "
                f"{sorted(outputs)}; wrap the model so it returns the one to export."
            )
        return next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(
                f"Export needs a model with one output. Received: {len(outputs)} outputs; "
                "wrap the model so it returns the one to export."
            )
        return outputs[0]
    return outputs


def frozen_function(function):
    """Freezes a ``tf.function``'s variables into constants; returns a concrete function.

    Example:
        >>> import tensorflow as tf
        >>> v = tf.Variable(2.0)
        >>> f = tf.function(lambda x: x * v, input_signature=[tf.TensorSpec((), tf.float32)])
        >>> [op.type for op in frozen_function(f).graph.get_operations()].count("Const") >= 1
        True
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    return convert_variables_to_constants_v2(function.get_concrete_function())


def has_fake_quant(frozen):
    """Whether a frozen graph carries learned quantization ranges (a QAT model).

    Example:
        >>> import tensorflow as tf
        >>> f = tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec((), tf.float32)])
        >>> has_fake_quant(frozen_function(f))
        False
    """
    return any(node.op.startswith("FakeQuant") for node in _all_nodes(frozen.graph.as_graph_def()))


def _all_nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def sample_inputs(inputs, num_rows, seed=0):
    """Random inputs in the model's valid range (token ids below the vocabulary size).

    Args:
        inputs: A ``ModelInputs``.
        num_rows: Rows of each array (the batch axis).
        seed: Random seed.

    Returns:
        A dict ``name -> array``: masks are ones, integer inputs uniform below the
        vocabulary size (2 without an embedding), float inputs standard normal.

    Example:
        >>> from keras_llmopt._src.core.model_inputs import ModelInputs
        >>> described = ModelInputs((InputSpec("tokens", (1, 4), "int32", "tokens"),))
        >>> sample_inputs(described, 3)["tokens"].shape
        (3, 4)
    """
    rng = np.random.default_rng(seed)
    vocab = inputs.vocabulary_size or 2
    out = {}
    for spec in inputs.specs:
        shape = (num_rows, *spec.shape[1:])
        if spec.is_mask:
            out[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif np.issubdtype(np.dtype(spec.dtype), np.integer):
            out[spec.name] = rng.integers(0, vocab, size=shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return out
