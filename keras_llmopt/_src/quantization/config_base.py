"""The ``QuantizeConfig`` interface, and the base of the built-in configs.

tfmot's interface, simplified for Keras 3 (layers are patched, not cloned):

* ``get_weights_and_quantizers(layer)``: ``[(weight, quantizer), ...]``, the weight
  given as its attribute name (``"kernel"``) or the variable itself. During a call
  the layer sees the fake-quantized weight in place of the variable.
* ``get_activations_and_quantizers(layer)``: ``[(attribute, quantizer), ...]`` for
  callable attributes such as ``"activation"``: the quantizer is applied to the
  *input* of that function (e.g. a Dense's pre-activation, which TFLite's
  FULLY_CONNECTED outputs before a separate GELU).
* ``get_output_quantizers(layer)``: one quantizer per output to quantize.
* ``get_config()``; there are no ``set_quantize_*`` methods: the framework swaps
  the quantized tensors in and out around the layer's own ``call``.

A config instance is deep-copied per layer, so quantizers may be created in
``__init__`` or in the getters.
"""

from keras_llmopt._src.core import layer_tree
from keras_llmopt._src.quantization.layer_quantizers import ActivationQuantizer, WeightQuantizer


class QuantizeConfig:
    """Base class describing how to quantize one layer (tfmot's ``QuantizeConfig``).

    Subclass it for custom layers and pass an instance to
    ``quantize_annotate_layer(layer, quantize_config=...)``.

    Example:
        >>> class ScaleConfig(QuantizeConfig):
        ...     def get_weights_and_quantizers(self, layer):
        ...         return [("w", WeightQuantizer(num_bits=8, per_channel=False))]
        ...     def get_output_quantizers(self, layer):
        ...         return [ActivationQuantizer()]
    """

    def get_weights_and_quantizers(self, layer):
        """``[(weight attribute name or variable, Quantizer)]``."""
        return []

    def get_activations_and_quantizers(self, layer):
        """``[(callable attribute name, Quantizer)]``; quantizes the callable's input."""
        return []

    def get_output_quantizers(self, layer):
        """Quantizers for the layer's outputs, in order."""
        return []

    def quantize_outputs(self, layer, call_kwargs):
        """Whether this call's outputs are quantized (default: always)."""
        return True

    def select_output_quantizers(self, layer, call_kwargs, quantizers):
        """The quantizers (of ``get_output_quantizers``) for one call's outputs.

        Default: all of them if :meth:`quantize_outputs`, else none.
        """
        return quantizers if self.quantize_outputs(layer, call_kwargs) else []

    def get_config(self):
        """Constructor arguments."""
        return {}

    @classmethod
    def from_config(cls, config):
        """Rebuilds the config from :meth:`get_config`."""
        return cls(**config)


def scheme_of(value):
    from keras_llmopt._src.quantization.schemes import QuantizeScheme

    return QuantizeScheme.from_config(value) if isinstance(value, dict) else value


class SchemeConfig(QuantizeConfig):
    """A built-in config: a scheme plus plain constructor arguments, all serializable.

    Two placements are planned per model by ``consumer_inputs.plan`` (and saved):
    ``quantize_input``, an activation range on the layer's first input (its producer
    leaves it in float: a KerasHub RMSNorm, a SiLU gate product, rotary embeddings,
    an inline op), and ``inline_ops``, the products the layer's ``call`` computes
    inline with ``keras.ops`` (``core.inline_ops.InlineOp`` configs), whose operands
    and results get ranges.
    """

    def __init__(self, scheme):
        self.scheme = scheme_of(scheme)
        self.quantize_input = False
        self.inline_ops = []

    def get_config(self):
        config = {"scheme": self.scheme.get_config()}
        if self.quantize_input:
            config["quantize_input"] = True
        if self.inline_ops:
            config["inline_ops"] = [dict(op) for op in self.inline_ops]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        quantize_input = bool(config.pop("quantize_input", False))
        inline_ops = list(config.pop("inline_ops", []))
        instance = cls(**config)
        instance.quantize_input = quantize_input
        instance.inline_ops = inline_ops
        return instance

    def get_input_quantizers(self, layer):
        """``[quantizer]`` for the layer's first input, when planned (else ``[]``)."""
        if not self.quantize_input or self.scheme.activation_bits is None:
            return []
        return [activation_quantizer(self.scheme)]

    def quantizes_input(self, layer, call_kwargs):
        """Whether this call's first input gets the input quantizer (default: yes)."""
        return True

    def get_inline_op_quantizers(self, layer):
        """Per inline op: ``([operand quantizer or None, ...], result quantizer or None)``.

        Activation operands are symmetric (the converter may put either on the
        right-hand side of BATCH_MATMUL, whose int8 kernel takes no zero point there);
        a variable operand gets a per-tensor weight range unless the layer's own
        weights are already quantized by its config.
        """
        found = []
        for spec in self.inline_ops:
            operands = []
            for kind in spec["operands"]:
                if kind == "weight":
                    own = bool(self.get_weights_and_quantizers(layer))
                    operands.append(None if own else weight_quantizer(self.scheme, 0, False))
                elif self.scheme.activation_bits is None:
                    operands.append(None)
                else:
                    operands.append(activation_quantizer(self.scheme, symmetric=True))
            result = (
                None if self.scheme.activation_bits is None else activation_quantizer(self.scheme)
            )
            found.append((operands, result))
        return found


def activation_quantizer(scheme, margin=0.0, symmetric=False):
    return ActivationQuantizer(
        num_bits=scheme.activation_bits,
        symmetric=scheme.activation_symmetric or symmetric,
        momentum=scheme.momentum,
        margin=margin,
    )


def weight_quantizer(scheme, output_axes=1, per_channel=None):
    return WeightQuantizer(
        num_bits=scheme.weight_bits,
        per_channel=scheme.weight_per_channel if per_channel is None else per_channel,
        group_size=scheme.weight_group_size,
        output_axes=output_axes,
    )


def einsum_output_axes(layer):
    """Trailing kernel axes of an EinsumDense that index its output (1 if not trailing)."""
    parts = layer_tree.einsum_parts(layer)
    if parts is None:
        return 1
    _, kernel, output = parts
    count = 0
    for letter in reversed(kernel):
        if letter not in output:
            break
        count += 1
    if count == 0 or any(letter in output for letter in kernel[: len(kernel) - count]):
        return 0  # output axes not trailing: one range per tensor
    return count


def einsum_dense_view(layer):
    """``(n_in, n_out)`` if an EinsumDense is a Dense over flattened trailing axes, else None.

    True of ``"abc,cde->abde"`` (attention q/k/v: ``(B, T, d) x (d, N, H)``) and
    ``"abcd,cde->abe"`` (attention output); such a layer is quantized and computed as
    one matmul with a 2-D ``(inputs, outputs)`` kernel, which TFLite turns into a
    FULLY_CONNECTED with per-output-channel int8 weights.
    """
    parts = layer_tree.einsum_parts(layer)
    if parts is None or "." in "".join(parts):
        return None
    inputs, kernel, output = parts
    k_in = "".join(c for c in kernel if c in inputs and c not in output)
    k_out = "".join(c for c in kernel if c in output and c not in inputs)
    if not k_in or not k_out or kernel != k_in + k_out:
        return None
    if not inputs.endswith(k_in) or not output.endswith(k_out):
        return None
    if inputs[: -len(k_in)] != output[: -len(k_out)]:
        return None
    return len(k_in), len(k_out)
