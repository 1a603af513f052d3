"""In-place quantization of one layer: a state sublayer and an intercepted ``call``.

Every quantized layer keeps its place in the model (functional, Sequential,
subclassed, KerasHub): it gets a :class:`QuantizeState` sublayer that owns the
quantizers' variables (activation ranges, pruning masks: tracked, so ``fit``,
``save_weights``/checkpoints and distribution strategies carry them), and its
``call`` is replaced on the instance by one that swaps fake-quantized weights into
the layer's weight attributes, wraps its activation function, runs the original
``call`` and fake-quantizes the outputs. ``saving.py`` makes such a model savable.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.core.layer_state import call_training, is_training, set_tracked
from keras_llmopt._src.quantization import attention as attention_lib
from keras_llmopt._src.quantization.configs import AttentionConfig, QuantizeConfig

STATE_ATTR = "_llmopt_quantize_state"


class _QuantizedWeight:
    def __init__(self, name, storage_attr, variable, quantizer, mask, dense_view=None, scale=None):
        self.name = name
        self.storage_attr = storage_attr
        self.variable = variable
        self.quantizer = quantizer
        self.mask = mask
        self.dense_view = dense_view
        self.scale = scale  # a folded output scale (WeightedLayerConfig.output_scale)

    def value(self, training):
        """The fake-quantized weight (2-D ``(inputs, outputs)`` for a dense view).

        With a folded ``scale`` this is the quantized ``scale * weight``.
        """
        w = ops.convert_to_tensor(self.variable)
        if self.mask is not None:
            w = w * ops.cast(ops.convert_to_tensor(self.mask), w.dtype)
        if self.dense_view is not None:
            w = ops.reshape(w, (math.prod(w.shape[: self.dense_view[0]]), -1))
        if self.scale is not None:
            w = w * ops.cast(self.scale, w.dtype)
        return self.quantizer(w, training=training)

    def variable_value(self):
        """The fake-quantized weight in the variable's shape and scale (inference)."""
        w = ops.reshape(self.value(False), tuple(self.variable.shape))
        if self.scale is not None:
            w = w / ops.cast(self.scale, w.dtype)
        return w


@keras.saving.register_keras_serializable(package="keras_llmopt")
class QuantizeState(keras.layers.Layer):
    """Holds the quantization variables of one quantized layer (never called itself).

    Example:
        >>> from keras_llmopt._src.quantization import configs, schemes
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 8))
        >>> state = install(dense, configs.default_config(dense, schemes.get_scheme(
        ...     "default_8bit")), path="dense")
        >>> [v.name for v in state.non_trainable_weights]
        ['output_0_min', 'output_0_max', 'output_0_count']
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "weights_q", [])
        object.__setattr__(self, "activations_q", [])
        object.__setattr__(self, "outputs_q", [])
        object.__setattr__(self, "attention_q", {})
        object.__setattr__(self, "config", None)
        object.__setattr__(self, "_owner", lambda: None)

    def setup(self, owner, config, path, preserve_sparsity=True, masked=None):
        """Resolves ``config`` against ``owner`` and creates the variables.

        ``masked``: names of the weights that get a sparsity mask regardless of their
        current zeros (a saved model being rebuilt; the masks' values are loaded).
        """
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "_owner", lambda: owner)
        weights = []
        dense_view = getattr(config, "dense_view", None)
        output_scale = getattr(config, "output_scale", None)
        if output_scale is not None and dense_view is None:
            raise ValueError(
                f"QuantizeConfig of layer '{path}': output_scale is only supported for "
                f"layers computed through dense_view. Received: output_scale={output_scale}, "
                "dense_view=None"
            )
        for i, (ref, quantizer) in enumerate(config.get_weights_and_quantizers(owner)):
            name, variable, attr = _resolve_weight(owner, ref, path)
            mask = None
            keep = _mask_values(name, variable, preserve_sparsity, masked)
            if keep is not None:
                mask = self.add_weight(
                    shape=tuple(variable.shape),
                    initializer="ones",
                    trainable=False,
                    aggregation="only_first_replica",
                    name=f"{name}_mask",
                )
                mask.assign(keep)
            quantizer.build(self, tuple(variable.shape), f"{name}_{i}")
            scale = output_scale if ref == getattr(config, "weight_name", None) else None
            weights.append(
                _QuantizedWeight(name, attr, variable, quantizer, mask, dense_view, scale)
            )
        activations = []
        for i, (attr, quantizer) in enumerate(config.get_activations_and_quantizers(owner)):
            if not callable(getattr(owner, attr, None)):
                raise ValueError(
                    f"QuantizeConfig of layer '{path}': activation attribute {attr!r} is not a "
                    f"callable of {type(owner).__name__}. Received: {attr!r}"
                )
            quantizer.build(self, None, f"{attr}_{i}")
            activations.append((attr, quantizer))
        outputs = list(config.get_output_quantizers(owner))
        for i, quantizer in enumerate(outputs):
            quantizer.build(self, None, f"output_{i}")
        attention = {}
        if isinstance(config, AttentionConfig):
            attention = config.get_attention_quantizers(owner)
            for name, quantizer in attention.items():
                quantizer.build(self, None, f"attention_{name}")
        object.__setattr__(self, "weights_q", weights)
        object.__setattr__(self, "activations_q", activations)
        object.__setattr__(self, "outputs_q", outputs)
        object.__setattr__(self, "attention_q", attention)
        self.built = True

    def get_owner(self):
        """The quantized layer."""
        return self._owner()

    @property
    def is_empty(self):
        """Nothing to quantize (e.g. a normalization under a weight-only scheme)."""
        return not (self.weights_q or self.activations_q or self.outputs_q or self.attention_q)

    def activation_quantizers(self):
        """Every quantizer with a learned range, with a readable name."""
        from keras_llmopt._src.quantization.layer_quantizers import ActivationQuantizer

        found = [(f"activation:{a}", q) for a, q in self.activations_q]
        found += [(f"output:{i}", q) for i, q in enumerate(self.outputs_q)]
        found += [(f"attention:{n}", q) for n, q in self.attention_q.items()]
        return [(n, q) for n, q in found if isinstance(q, ActivationQuantizer)]

    def call(self, *args, **kwargs):
        raise RuntimeError("QuantizeState holds variables only; it is not meant to be called.")


def _mask_values(name, variable, preserve_sparsity, masked):
    """The 0/1 sparsity mask a weight gets, or ``None`` for no mask.

    ``masked`` (a rebuilt saved model) names the weights that had one; their values
    are loaded afterwards. Otherwise a weight with exact zeros keeps them.
    """
    if masked is not None:
        return np.ones(tuple(variable.shape), "float32") if name in masked else None
    if not preserve_sparsity:
        return None
    zeros = ops.convert_to_numpy(variable) == 0
    return (~zeros).astype("float32") if np.any(zeros) else None


def _resolve_weight(owner, ref, path):
    if isinstance(ref, str):
        try:
            variable = getattr(owner, ref)
        except Exception:
            variable = None
        name = ref
    else:
        variable, name = ref, getattr(ref, "name", "weight")
    if not isinstance(variable, keras.Variable):
        raise ValueError(
            f"QuantizeConfig of layer '{path}': weight {ref!r} is not a keras.Variable of the "
            f"layer ({type(owner).__name__}). Received: {ref!r}"
        )
    attr = layer_tree.storage_attr_of(owner, variable)
    if attr is None:
        raise ValueError(
            f"QuantizeConfig of layer '{path}': weight {name!r} is not stored in an attribute "
            "of the layer, so it cannot be swapped for its quantized value."
        )
    return name.split("/")[-1], variable, attr


@contextlib.contextmanager
def _swapped(layer, state, training):
    saved = []
    try:
        for qw in state.weights_q:
            saved.append((qw.storage_attr, getattr(layer, qw.storage_attr)))
            value = qw.value(training)
            if qw.dense_view is not None:
                value = ops.reshape(value, tuple(qw.variable.shape))
            object.__setattr__(layer, qw.storage_attr, value)
        for attr, quantizer in state.activations_q:
            function = getattr(layer, attr)
            saved.append((attr, function))

            def wrapped(x, _f=function, _q=quantizer):
                return _f(_q(x, training=training))

            object.__setattr__(layer, attr, wrapped)
        yield
    finally:
        for attr, value in reversed(saved):
            object.__setattr__(layer, attr, value)


def _einsum_as_dense(layer, x, kernel, dense_view, state, training):
    """An EinsumDense computed as one matmul on flattened trailing axes (see configs)."""
    n_in, _ = dense_view
    shape = ops.shape(x)
    lead = list(shape[: len(x.shape) - n_in])
    out_dims = list(state.weights_q[0].variable.shape[n_in:])
    flat = ops.reshape(x, lead + [kernel.shape[0]])
    kernel = ops.cast(kernel, flat.dtype)
    if n_in == 1:
        y = ops.matmul(flat, kernel)
    else:
        # Inputs flattened here (the attention output projection): an einsum with the
        # batch axes spelled out, not ``matmul`` (a 2-D tensordot in TensorFlow, which
        # the converter merges with this reshape into a FULLY_CONNECTED with a 2-D
        # output that then meets the residual ADD by broadcasting, which LiteRT's
        # int16 ADD in 16x8 mode refuses). "..." in the equation trains ~50x slower.
        axes = "abcdefgh"[: len(lead)]
        y = ops.einsum(f"{axes}i,io->{axes}o", flat, kernel)
    y = ops.reshape(y, lead + out_dims)
    if layer.bias is not None:
        bias = ops.cast(layer.bias, y.dtype)
        if state.weights_q[0].scale is not None:
            bias = bias * ops.cast(state.weights_q[0].scale, y.dtype)
        y = y + bias
    activation = layer.activation
    if activation is not None and activation is not keras.activations.linear:
        for _, quantizer in state.activations_q:
            y = quantizer(y, training=training)
        y = activation(y)
    return y


def _quantize_outputs(outputs, quantizers, training):
    if not quantizers:
        return outputs
    if isinstance(outputs, list | tuple):
        items = list(outputs)
        for i, quantizer in enumerate(quantizers[: len(items)]):
            items[i] = quantizer(items[i], training=training)
        return type(outputs)(items)
    return quantizers[0](outputs, training=training)


def install(layer, config, path, preserve_sparsity=True, masked=None):
    """Quantizes ``layer`` in place with ``config``; returns its :class:`QuantizeState`.

    ``masked``: see :meth:`QuantizeState.setup`.

    Raises:
        TypeError: ``config`` is not a :class:`QuantizeConfig`.
        ValueError: The config names weights or activations the layer lacks.
    """
    if not isinstance(config, QuantizeConfig):
        raise TypeError(
            f"The quantize_config of layer '{path}' must be a QuantizeConfig. "
            f"Received: quantize_config={config!r}"
        )
    state = QuantizeState(name=f"{layer.name}_quantize_state", dtype="float32")
    state.setup(layer, config, path, preserve_sparsity, masked)
    if state.is_empty:
        return state
    set_tracked(layer, STATE_ATTR, state)
    original = layer.call

    def quantized_call(*args, **kwargs):
        training = call_training(kwargs)
        with _swapped(layer, state, training):
            outputs = original(*args, **kwargs)
        quantizers = state.config.select_output_quantizers(layer, kwargs, state.outputs_q)
        outputs = _quantize_outputs(outputs, quantizers, training)
        return outputs

    dense_view = getattr(config, "dense_view", None)
    if dense_view is not None and state.weights_q:

        def quantized_call(inputs, *args, **kwargs):  # noqa: F811
            training = call_training(kwargs)
            kernel = state.weights_q[0].value(training)
            outputs = _einsum_as_dense(layer, inputs, kernel, dense_view, state, training)
            return _quantize_outputs(outputs, state.outputs_q, training)

    object.__setattr__(layer, "call", quantized_call)
    if state.attention_q:
        object.__setattr__(
            layer,
            keras_compat.COMPUTE_ATTENTION_ATTR,
            attention_lib.make_compute_attention(layer, state.attention_q, is_training),
        )
    return state


def copy_model(model, what="quantizing"):
    """A deep, independent copy of a Keras model (Keras copies through its saving code)."""
    import copy

    try:
        return copy.deepcopy(model)
    except Exception as error:
        raise ValueError(
            f"Could not copy model '{model.name}' ({type(model).__name__}) before {what} (the "
            f"user's model is never modified): {error}. Custom layers and models need "
            "`get_config()` and `keras.saving.register_keras_serializable()` to be copied."
        ) from error


def uncompiled_copy(model, what="stripping"):
    """A deep copy of ``model`` without its compiled optimizer (whose state would not fit)."""
    saved = {k: vars(model)[k] for k in ("optimizer", "compiled") if k in vars(model)}
    try:
        for key in saved:
            object.__setattr__(model, key, None if key == "optimizer" else False)
        return copy_model(model, what)
    finally:
        for key, value in saved.items():
            object.__setattr__(model, key, value)


def states(model):
    """``[(path, QuantizeState)]`` of every quantized layer under ``model``."""
    found = []
    for node in layer_tree.walk_layers(model):
        state = vars(node.layer).get(STATE_ATTR)
        if isinstance(state, QuantizeState):
            found.append((node.path, state))
    return found
