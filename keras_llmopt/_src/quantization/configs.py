"""The built-in ``QuantizeConfig``s and the default config of each layer type.

The interface and the configs' common base are in ``config_base``; the defaults are
looked up by ``default_config`` (latest registration first), and a layer known only by
the core's weight table gets ``RegisteredWeightsConfig``.
"""

import keras

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.quantization.config_base import (  # noqa: F401 (re-exported)
    QuantizeConfig,
    SchemeConfig,
    einsum_dense_view,
    einsum_output_axes,
)
from keras_llmopt._src.quantization.config_base import activation_quantizer as _activation_quantizer
from keras_llmopt._src.quantization.config_base import weight_quantizer as _weight_quantizer
from keras_llmopt._src.quantization.layer_quantizers import FixedRangeQuantizer

_SchemeConfig = SchemeConfig

# Room below the attention scores' observed minimum for the masked positions' fill:
# exp(-16) * 4096 keys < 5e-4 of a row's probability mass, below int8 softmax's 1/256 step.
ATTENTION_MASK_MARGIN = 16.0


@keras.saving.register_keras_serializable(package="keras_llmopt")
class WeightedLayerConfig(_SchemeConfig):
    """Dense, EinsumDense and Conv: kernel per output channel, pre-activation and output.

    Args:
        scheme: A ``QuantizeScheme``.
        output_axes: Trailing kernel axes forming the output channel (0: per tensor).
        weight_name: The kernel's attribute.
        dense_view: ``(input axes, output axes)`` of an EinsumDense kernel seen as 2-D.
        symmetric_output: Output range ``[-r, r]`` with zero point 0 even when the
            scheme's activations are asymmetric (attention key and value projections).
        output_scale: A constant the layer's output is multiplied by, folded into its
            kernel and bias before the kernel is quantized (the attention's
            ``1/sqrt(key_dim)`` on the query projection; see ``fold_query_scales``).
            Only for layers computed through ``dense_view``.
    """

    def __init__(
        self,
        scheme,
        output_axes=1,
        weight_name="kernel",
        dense_view=None,
        symmetric_output=False,
        output_scale=None,
    ):
        super().__init__(scheme)
        self.output_axes = output_axes
        self.weight_name = weight_name
        self.dense_view = None if dense_view is None else tuple(dense_view)
        self.symmetric_output = bool(symmetric_output)
        self.output_scale = None if output_scale is None else float(output_scale)

    def get_config(self):
        return {
            **super().get_config(),
            "output_axes": self.output_axes,
            "weight_name": self.weight_name,
            "dense_view": None if self.dense_view is None else list(self.dense_view),
            "symmetric_output": self.symmetric_output,
            "output_scale": self.output_scale,
        }

    def get_weights_and_quantizers(self, layer):
        if self.dense_view is not None:  # quantized on the 2-D (inputs, outputs) view
            return [(self.weight_name, _weight_quantizer(self.scheme, 1))]
        per_channel = None if self.output_axes else False
        return [(self.weight_name, _weight_quantizer(self.scheme, self.output_axes, per_channel))]

    def get_activations_and_quantizers(self, layer):
        activation = getattr(layer, "activation", None)
        if self.scheme.activation_bits is None or activation in (None, keras.activations.linear):
            return []
        if self.scheme.activation_bits > 8 and _lacks_int16_kernel(activation):
            # LiteRT has no int16 GELU: without a range on its input the converter
            # computes this layer's matmul and activation in float between int16 tensors.
            return []
        return [("activation", _activation_quantizer(self.scheme))]

    def get_output_quantizers(self, layer):
        if self.scheme.activation_bits is None:
            return []
        return [_activation_quantizer(self.scheme, symmetric=self.symmetric_output)]


def _lacks_int16_kernel(activation):
    """Activations LiteRT has no int16 kernel for (GELU, exact or approximate)."""
    name = getattr(activation, "__name__", "") or type(activation).__name__
    return "gelu" in name.lower()


def _has_reverse_kernel(layer):
    """Whether a reversible embedding has its own output kernel (untied weights)."""
    return getattr(layer, "tie_weights", True) is False and isinstance(
        getattr(layer, "reverse_embeddings", None), keras.Variable
    )


def _takes_reverse(layer):
    import inspect

    try:
        # The class's call: the instance's is replaced by the quantized call.
        return "reverse" in inspect.signature(type(layer).call).parameters
    except (TypeError, ValueError):
        return False


@keras.saving.register_keras_serializable(package="keras_llmopt")
class EmbeddingConfig(_SchemeConfig):
    """Embedding: the table per tensor (TFLite's GATHER keeps the table's scale).

    Also KerasHub's ``PositionEmbedding`` (table ``position_embeddings``).
    A lookup's output keeps the table's quantization, except with 16-bit
    activations: its int8 codes are then requantized to an int16 range (an output
    quantizer), since LiteRT's int16 kernels do not take int8 inputs. A reversible
    embedding used as the output head (``reverse=True``, KerasHub) gets an output
    quantizer of its own.
    """

    def __init__(self, scheme, weight_name="embeddings"):
        super().__init__(scheme)
        self.weight_name = weight_name

    def get_config(self):
        return {**super().get_config(), "weight_name": self.weight_name}

    def get_weights_and_quantizers(self, layer):
        found = [(self.weight_name, _weight_quantizer(self.scheme, 0, per_channel=False))]
        if _has_reverse_kernel(layer):
            # An untied output head (KerasHub Llama, Gemma 3, ...): (hidden, vocabulary),
            # per vocabulary row like any output projection.
            found.append(("reverse_embeddings", _weight_quantizer(self.scheme, 1)))
        return found

    def quantizes_input(self, layer, call_kwargs):
        return bool(call_kwargs.get("reverse", False))

    def _requantizes_lookup(self):
        return (self.scheme.activation_bits or 0) > self.scheme.weight_bits

    def get_output_quantizers(self, layer):
        if self.scheme.activation_bits is None:
            return []
        quantizers = []
        if self._requantizes_lookup():
            quantizers.append(_activation_quantizer(self.scheme))
        if _takes_reverse(layer):
            quantizers.append(_activation_quantizer(self.scheme))
        return quantizers

    def select_output_quantizers(self, layer, call_kwargs, quantizers):
        if call_kwargs.get("reverse", False):
            return quantizers[-1:] if _takes_reverse(layer) else []
        return quantizers[:1] if self._requantizes_lookup() else []


@keras.saving.register_keras_serializable(package="keras_llmopt")
class OutputConfig(_SchemeConfig):
    """Layers quantized at their output only: residual adds, normalizations."""

    def get_output_quantizers(self, layer):
        return [] if self.scheme.activation_bits is None else [_activation_quantizer(self.scheme)]


@keras.saving.register_keras_serializable(package="keras_llmopt")
class InlineOpsConfig(_SchemeConfig):
    """A layer quantized only at the products its ``call`` computes inline.

    KerasHub's attention layers (query-key scores, probabilities-value mix) and MoE
    experts compute with ``keras.ops.einsum`` on tensors no layer outputs; the planner
    (``consumer_inputs.plan``) gives such a layer this config with its ``inline_ops``.

    Example:
        >>> from keras_llmopt._src.quantization import schemes
        >>> config = InlineOpsConfig(schemes.get_scheme("default_8bit"), inline_ops=[
        ...     {"op": "einsum", "equation": "ab,cb->ac", "operands": ["activation"] * 2}])
        >>> len(config.get_inline_op_quantizers(None))
        1
    """

    def __init__(self, scheme, inline_ops=()):
        super().__init__(scheme)
        self.inline_ops = [dict(op) for op in inline_ops]


@keras.saving.register_keras_serializable(package="keras_llmopt")
class AttentionConfig(_SchemeConfig):
    """MultiHeadAttention's inner tensors (its q/k/v/o EinsumDense are quantized as layers).

    ``get_attention_quantizers`` gives the quantizers of the scaled query, the
    attention scores (observed over unmasked positions only, range lowered by
    ``ATTENTION_MASK_MARGIN`` to hold the mask fill), the softmax probabilities
    (fixed ``[0, 1)``) and the attention output (before the output projection).
    """

    def __init__(self, scheme, query_scaled=False):
        super().__init__(scheme)
        # True when the query projection already outputs the scaled query (its
        # kernel holds 1/sqrt(key_dim), see fold_query_scales): no MUL, no "query".
        self.query_scaled = bool(query_scaled)

    def get_config(self):
        return {**super().get_config(), "query_scaled": self.query_scaled}

    def get_attention_quantizers(self, layer):
        """``{"query", "scores", "probs", "output"}`` -> quantizer (empty: weight-only)."""
        if self.scheme.activation_bits is None:
            return {}
        bits = self.scheme.activation_bits
        if self.scheme.activation_symmetric:
            top = 1.0 - 2.0 ** -(bits - 1)
            probs = FixedRangeQuantizer(-top, top, num_bits=bits, narrow_range=True)
        else:
            probs = FixedRangeQuantizer(0.0, 255.0 / 256.0, num_bits=8)
        quantizers = {
            "scores": _activation_quantizer(self.scheme, margin=ATTENTION_MASK_MARGIN),
            "probs": probs,
            "output": _activation_quantizer(self.scheme),
        }
        if not self.query_scaled:
            # Symmetric like the key and value (see attention_value_operands): the
            # converter may put the scaled query on either side of the score matmul.
            quantizers["query"] = _activation_quantizer(self.scheme, symmetric=True)
        return quantizers


_NORM_TYPES = [keras.layers.LayerNormalization]
for _name in ("RMSNormalization", "GroupNormalization", "BatchNormalization", "UnitNormalization"):
    if hasattr(keras.layers, _name):
        _NORM_TYPES.append(getattr(keras.layers, _name))
_MERGE_TYPES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Average)
_NORM_SUFFIXES = ("LayerNorm", "RMSNorm", "LayerNormalization", "RMSNormalization")


def _is_norm_like(layer):
    """A normalization layer of another library (KerasHub's ``LlamaLayerNorm``, ...).

    Matched by class name, and only if its weights are vectors (scale, offset), so a
    layer with a kernel that happens to be called ``...Norm`` is not taken for one.
    """
    if isinstance(layer, keras.Model):
        return False
    if not any(c.__name__.endswith(_NORM_SUFFIXES) for c in type(layer).__mro__):
        return False
    return all(len(w.shape) <= 1 for w in layer.weights)


# (matches(layer) -> bool, factory(layer, scheme) -> config or None); last match wins.
_DEFAULTS = []


def register_default_config(layer_type, factory):
    """Registers the default config of a layer type (``isinstance``; latest wins).

    Args:
        layer_type: A ``keras.layers.Layer`` subclass.
        factory: ``fn(layer, scheme) -> QuantizeConfig`` (or ``None`` to skip).

    Example:
        >>> class MyDense(keras.layers.Dense):
        ...     pass
        >>> register_default_config(MyDense, lambda layer, scheme: WeightedLayerConfig(scheme))
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, keras.layers.Layer)):
        raise TypeError(
            f"`layer_type` must be a keras.layers.Layer subclass. Received: {layer_type!r}"
        )
    if not callable(factory):
        raise TypeError(f"`factory` must be callable. Received: factory={factory!r}")
    _DEFAULTS.append((lambda layer: isinstance(layer, layer_type), factory))


def _in_class_hierarchy(module, name):
    """Matches layers with a class ``name`` from ``module`` among their bases.

    For optional libraries' layers (KerasHub), which need not be imported here.
    """

    def matches(layer):
        return any(
            c.__name__ == name and c.__module__.startswith(module) for c in type(layer).__mro__
        )

    return matches


def _register_builtin():
    # Dense and dense-like EinsumDense are computed by the quantized call itself (no
    # weight swap around the original call while an observer updates: under
    # MirroredStrategy an update is a merge_call, where replica threads interleave).
    register_default_config(
        keras.layers.Dense, lambda layer, s: WeightedLayerConfig(s, dense_view=(1, 1))
    )
    register_default_config(
        keras.layers.EinsumDense,
        lambda layer, s: WeightedLayerConfig(
            s, output_axes=einsum_output_axes(layer), dense_view=einsum_dense_view(layer)
        ),
    )
    register_default_config(keras_compat.BaseConv, lambda layer, s: WeightedLayerConfig(s))
    register_default_config(keras.layers.Embedding, lambda layer, s: EmbeddingConfig(s))
    _DEFAULTS.append(
        (_is_norm_like, lambda layer, s: OutputConfig(s) if s.activation_bits else None)
    )
    for layer_type in (*_NORM_TYPES, *_MERGE_TYPES):
        register_default_config(
            layer_type, lambda layer, s: OutputConfig(s) if s.activation_bits else None
        )
    _DEFAULTS.append(
        (
            _in_class_hierarchy("keras_hub", "PositionEmbedding"),
            lambda layer, s: EmbeddingConfig(s, weight_name="position_embeddings"),
        )
    )
    register_default_config(
        keras.layers.MultiHeadAttention,
        lambda layer, s: AttentionConfig(s) if s.activation_bits else None,
    )


_register_builtin()


def default_config(layer, scheme):
    """The default config for ``layer`` under ``scheme``, or ``None``.

    A layer type with no quantization default of its own but registered in the core's
    weight table (``keras_llmopt.techniques``' ``register_weights``, the table pruning
    and clustering use) gets :class:`RegisteredWeightsConfig`: one registration serves
    every technique.

    Example:
        >>> from keras_llmopt._src.core import layer_tree
        >>> from keras_llmopt._src.quantization import schemes
        >>> class Scale(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.w = self.add_weight(shape=(shape[-1], 4))
        ...     def call(self, x):
        ...         return x @ self.w
        >>> layer_tree.register_weights(Scale, ["w"])
        >>> type(default_config(Scale(), schemes.get_scheme("default_8bit"))).__name__
        'RegisteredWeightsConfig'
    """
    for matches, factory in reversed(_DEFAULTS):
        if matches(layer):
            return factory(layer, scheme)
    entry = layer_tree.table_entry(layer)
    if entry is not None:
        return RegisteredWeightsConfig(scheme, list(entry.weight_names))
    return None


def has_default(layer):
    """Whether a default config is registered for ``layer``'s type (or its weights are)."""
    return any(matches(layer) for matches, _ in _DEFAULTS) or layer_tree.is_registered(layer)


@keras.saving.register_keras_serializable(package="keras_llmopt")
class RegisteredWeightsConfig(_SchemeConfig):
    """A layer known only by the core's weight table: its weights per output channel.

    The output channel of each weight is the product of its trailing axes that do not
    run along the input (from the table's ``input_axes``); the outputs get an
    activation range when the scheme quantizes activations.

    Args:
        scheme: A ``QuantizeScheme``.
        weight_names: The weights' attribute names.
    """

    def __init__(self, scheme, weight_names):
        super().__init__(scheme)
        self.weight_names = list(weight_names)

    def get_config(self):
        return {**super().get_config(), "weight_names": self.weight_names}

    def get_weights_and_quantizers(self, layer):
        found = []
        weights, _ = layer_tree.find_weights(layer)
        by_name = {w.name: w for w in weights}
        for name in self.weight_names:
            ref = by_name.get(name)
            rank = len(ref.shape) if ref is not None else 2
            inputs = set(ref.input_axes) if ref is not None else {0}
            trailing = 0
            for axis in reversed(range(rank)):
                if axis in inputs:
                    break
                trailing += 1
            per_channel = None if trailing else False
            found.append((name, _weight_quantizer(self.scheme, trailing, per_channel)))
        return found

    def get_output_quantizers(self, layer):
        if self.scheme.activation_bits is None:
            return []
        return [_activation_quantizer(self.scheme)]
