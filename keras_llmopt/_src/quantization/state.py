"""In-place quantization of one layer: a :class:`QuantizeState` on the shared layer-state core.

Every quantized layer keeps its place in the model (functional, Sequential,
subclassed, KerasHub): it gets a :class:`QuantizeState` (activation ranges, pruning
masks: tracked Keras variables, so ``fit``, checkpoints and distribution strategies
carry them), and the core's interceptor gives it fake-quantized weights, wraps its
activation function, and fake-quantizes its outputs. Dense and dense-like EinsumDense
layers are computed by the state itself from the quantized kernel, with no attribute
swapped while an observer updates (under MirroredStrategy an update is a merge_call,
where replica threads interleave). ``core.saving`` makes such a model savable.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.core import inline_ops, keras_compat, layer_state, layer_tree
from keras_llmopt._src.quantization import attention as attention_lib
from keras_llmopt._src.quantization.configs import AttentionConfig, EmbeddingConfig, QuantizeConfig

TECHNIQUE = "quantization"
STATE_ATTR = layer_state.state_attr(TECHNIQUE)


class _QuantizedWeight:
    def __init__(self, name, storage_attr, variable, quantizer, mask, dense_view=None, scale=None):
        self.name = name
        self.storage_attr = storage_attr
        self.variable = variable
        self.quantizer = quantizer
        self.mask = mask
        self.dense_view = dense_view
        self.scale = scale  # a folded output scale (WeightedLayerConfig.output_scale)

    def value(self, training, weight=None):
        """The fake-quantized weight (2-D ``(inputs, outputs)`` for a dense view).

        ``weight``: the value to quantize (what the states before quantization leave;
        default: the variable). With a folded ``scale`` this is the quantized
        ``scale * weight``.
        """
        w = ops.convert_to_tensor(self.variable if weight is None else weight)
        if self.mask is not None:
            w = w * ops.cast(ops.convert_to_tensor(self.mask), w.dtype)
        if self.dense_view is not None:
            w = ops.reshape(w, (math.prod(w.shape[: self.dense_view[0]]), -1))
        if self.scale is not None:
            w = w * ops.cast(self.scale, w.dtype)
        return self.quantizer(w, training=training)

    def variable_value(self, weight=None):
        """The fake-quantized weight in the variable's shape and scale (inference)."""
        w = ops.reshape(self.value(False, weight), tuple(self.variable.shape))
        if self.scale is not None:
            w = w / ops.cast(self.scale, w.dtype)
        return w


@keras.saving.register_keras_serializable(package="keras_llmopt")
class QuantizeState(layer_state.LayerState):
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

    technique = TECHNIQUE
    order = 30

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "weights_q", [])
        object.__setattr__(self, "activations_q", [])
        object.__setattr__(self, "outputs_q", [])
        object.__setattr__(self, "attention_q", {})
        object.__setattr__(self, "inputs_q", [])
        object.__setattr__(self, "inline_q", [])
        object.__setattr__(self, "config", None)

    def setup(self, owner, config, path, preserve_sparsity=True, masked=None):
        """Resolves ``config`` against ``owner`` and creates the variables.

        ``masked``: names of the weights that get a sparsity mask regardless of their
        current zeros (a saved model being rebuilt; the masks' values are loaded).
        """
        object.__setattr__(self, "config", config)
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
        inputs = list(_config_call(config, "get_input_quantizers", owner, []))
        for i, quantizer in enumerate(inputs):
            quantizer.build(self, None, f"input_{i}")
        inline = list(_config_call(config, "get_inline_op_quantizers", owner, []))
        for i, (operands, result) in enumerate(inline):
            for j, quantizer in enumerate(operands):
                if quantizer is not None:
                    quantizer.build(self, None, f"inline_{i}_operand_{j}")
            if result is not None:
                result.build(self, None, f"inline_{i}_result")
        object.__setattr__(self, "weights_q", weights)
        object.__setattr__(self, "activations_q", activations)
        object.__setattr__(self, "outputs_q", outputs)
        object.__setattr__(self, "attention_q", attention)
        object.__setattr__(self, "inputs_q", inputs)
        object.__setattr__(self, "inline_q", inline)

    @property
    def is_empty(self):
        """Nothing to quantize (e.g. a normalization under a weight-only scheme)."""
        return not (
            self.weights_q
            or self.activations_q
            or self.outputs_q
            or self.attention_q
            or self.inputs_q
            or self.inline_q
        )

    def activation_quantizers(self):
        """Every quantizer with a learned range, with a readable name."""
        from keras_llmopt._src.quantization.layer_quantizers import ActivationQuantizer

        found = [(f"activation:{a}", q) for a, q in self.activations_q]
        found += [(f"output:{i}", q) for i, q in enumerate(self.outputs_q)]
        found += [(f"attention:{n}", q) for n, q in self.attention_q.items()]
        found += [(f"input:{i}", q) for i, q in enumerate(self.inputs_q)]
        for i, (operands, result) in enumerate(self.inline_q):
            found += [(f"inline:{i}:operand:{j}", q) for j, q in enumerate(operands)]
            found.append((f"inline:{i}:result", result))
        return [(n, q) for n, q in found if isinstance(q, ActivationQuantizer)]

    @property
    def dense_view(self):
        """``(input axes, output axes)`` when the state computes the layer as one matmul."""
        view = getattr(self.config, "dense_view", None)
        return view if view is not None and self.weights_q else None

    # -- layer-state hooks --------------------------------------------------------

    def weight_attrs(self):
        return [qw.storage_attr for qw in self.weights_q]

    def transform_weight(self, attr, value, training):
        if self.dense_view is not None:
            return value  # quantized in compute(), from this value
        for qw in self.weights_q:
            if qw.storage_attr == attr:
                return qw.value(training, value)
        return value

    def transform_inputs(self, layer, args, kwargs, training):
        if not self.inputs_q or not self.config.quantizes_input(layer, kwargs):
            return args, kwargs
        if args:
            return (_quantize_float(args[0], self.inputs_q[0], training), *args[1:]), kwargs
        if "inputs" in kwargs:
            kwargs = dict(
                kwargs, inputs=_quantize_float(kwargs["inputs"], self.inputs_q[0], training)
            )
        return args, kwargs

    def call_scope(self, layer, training):
        # Every quantized layer opens a scope: an outer layer's inline-op plan never
        # applies to the products computed inside this one.
        if not self.inline_q:
            return inline_ops.rewriting(None)
        return inline_ops.rewriting(_InlineQuantizer(self, training))

    def attribute_overrides(self, layer, training):
        if self.dense_view is not None:
            return {}
        overrides = {}
        if _soft_capped_head(layer, self.config):
            # The head's matmul output gets its range; the cap is applied after it
            # (transform_outputs), so the FULLY_CONNECTED stays integer.
            overrides["logit_soft_cap"] = None
        for attr, quantizer in self.activations_q:
            function = getattr(layer, attr)

            def wrapped(x, _f=function, _q=quantizer):
                return _f(_q(x, training=training))

            overrides[attr] = wrapped
        return overrides

    def compute(self, layer, values, training):
        if self.dense_view is None:
            return None
        qw = self.weights_q[0]
        kernel = qw.value(training, values[qw.storage_attr])

        def dense_call(inputs, *args, **kwargs):
            return _einsum_as_dense(layer, inputs, kernel, self.dense_view, self, training)

        return dense_call

    def transform_outputs(self, layer, outputs, call_kwargs, training):
        if self.dense_view is not None:
            quantizers = self.outputs_q
        else:
            quantizers = self.config.select_output_quantizers(layer, call_kwargs, self.outputs_q)
        outputs = _quantize_outputs(outputs, quantizers, training)
        if call_kwargs.get("reverse", False) and _soft_capped_head(layer, self.config):
            cap = layer.logit_soft_cap
            outputs = ops.multiply(ops.tanh(ops.divide(outputs, cap)), cap)
        return outputs

    def on_install(self, layer):
        if self.attention_q:
            object.__setattr__(
                layer,
                keras_compat.COMPUTE_ATTENTION_ATTR,
                attention_lib.make_compute_attention(
                    layer, self.attention_q, layer_state.is_training
                ),
            )

    def on_remove(self, layer):
        if keras_compat.COMPUTE_ATTENTION_ATTR in vars(layer):
            object.__delattr__(layer, keras_compat.COMPUTE_ATTENTION_ATTR)

    def baked_weights(self, values):
        return {
            qw.storage_attr: qw.variable_value(values[qw.storage_attr]) for qw in self.weights_q
        }

    def record(self):
        try:
            config = keras.saving.serialize_keras_object(self.config)
        except Exception as error:
            raise ValueError(
                f"the QuantizeConfig ({type(self.config).__name__}) cannot be serialized: "
                f"{error}. A custom QuantizeConfig needs `get_config()` returning its "
                "constructor arguments"
            ) from error
        return {
            "config": config,
            "masked": [qw.name for qw in self.weights_q if qw.mask is not None],
        }


def _soft_capped_head(layer, config):
    """A reversible embedding head with a logit soft cap (Gemma 2), quantized."""
    return isinstance(config, EmbeddingConfig) and bool(getattr(layer, "logit_soft_cap", None))


class _InlineQuantizer:
    """Fake-quantizes one call's inline products, in the order the plan recorded."""

    def __init__(self, state, training):
        self.state = state
        self.training = training
        self.count = 0

    def __call__(self, op, operands, compute):
        index = self.count
        self.count += 1
        specs = self.state.config.inline_ops
        if index >= len(specs) or (specs[index]["op"], specs[index]["equation"]) != (
            op.op,
            op.equation,
        ):
            return compute(*operands)  # a call path the plan did not see
        quantizers, result = self.state.inline_q[index]
        operands = [
            x if q is None else q(x, training=self.training) for q, x in zip(quantizers, operands)
        ]
        y = compute(*operands)
        return y if result is None else result(y, training=self.training)


def _config_call(config, method, owner, default):
    function = getattr(config, method, None)
    return default if function is None else function(owner)


def _quantize_float(x, quantizer, training):
    dtype = getattr(x, "dtype", None)
    if dtype is None or "float" not in str(dtype):
        return x
    return quantizer(x, training=training)


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

    A config with nothing to quantize on this layer gives an empty state that is not
    installed. ``masked``: see :meth:`QuantizeState.setup`.

    Raises:
        TypeError: ``config`` is not a :class:`QuantizeConfig`.
        ValueError: The config names weights or activations the layer lacks.
    """
    if not isinstance(config, QuantizeConfig):
        raise TypeError(
            f"The quantize_config of layer '{path}' must be a QuantizeConfig. "
            f"Received: quantize_config={config!r}"
        )
    state = QuantizeState(name=f"{layer.name}_quantize_state")
    state.setup(layer, config, path, preserve_sparsity, masked)
    if not state.is_empty:
        layer_state.install(layer, state)
    return state


def restore(layer, record, path):
    """Re-creates a saved layer's :class:`QuantizeState` (values are loaded after)."""
    try:
        config = keras.saving.deserialize_keras_object(record["config"])
    except Exception as error:
        raise ValueError(
            f"Loading a quantized model: the QuantizeConfig of layer '{path}' could not be "
            f"rebuilt ({error}). Load inside "
            "`keras_llmopt.quantization.quantize_scope({'MyConfig': MyConfig})` or "
            "register the class with keras.saving.register_keras_serializable()."
        ) from error
    state = QuantizeState(name=f"{layer.name}_quantize_state")
    state.setup(layer, config, path, masked=set(record["masked"]))
    return state


def states(model):
    """``[(path, QuantizeState)]`` of every quantized layer under ``model``."""
    return layer_state.find_states(model, TECHNIQUE)
