"""Quantizers that a :class:`QuantizeConfig` attaches to a layer's weights and activations.

Each quantizer is a small object whose state (activation ranges) lives in Keras
variables owned by the quantized layer, so ``fit``, checkpoints and distribution
strategies carry it. On the TensorFlow backend the fake quantization is
TensorFlow's own ``FakeQuantWithMinMaxVars(PerChannel)`` op: its forward value is
what the integer kernels compute, its gradient is the clipped straight-through
estimator, and the TFLite converter reads its ranges to build a full-integer model.
On other backends (JAX) the same maths runs in ``keras.ops``
(:func:`~keras_llmopt._src.quantization.quantizers.fake_quant`).
"""

import contextlib
import math
import threading

import keras
from keras import ops

from keras_llmopt._src.quantization import observers
from keras_llmopt._src.quantization.quantizers import QuantSpec, fake_quant

_MIN_RANGE = 1e-8


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def fake_quant_range(x, lo, hi, num_bits, narrow_range):
    """Fake-quantizes ``x`` to ``num_bits`` over ``[lo, hi]`` (per tensor, or per last axis).

    Args:
        x: Float tensor.
        lo: Range minimum: a scalar, or shape ``(C,)`` for one range per index of
            the last axis.
        hi: Range maximum, same shape.
        num_bits: 2 to 16.
        narrow_range: Drop the lowest code (symmetric int8 weights).

    Returns:
        The quantize-dequantized ``x`` (same dtype); gradients pass straight through
        inside the range.

    Example:
        >>> y = fake_quant_range(keras.ops.convert_to_tensor([0.3, 9.0]), -1.0, 1.0, 8, False)
        >>> [round(float(v), 3) for v in y]
        [0.298, 1.004]
    """
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    if "float32" not in str(dtype):
        x = ops.cast(x, "float32")
    lo = ops.cast(lo, "float32")
    hi = ops.cast(hi, "float32")
    per_channel = len(lo.shape) > 0
    if _on_tensorflow():
        import tensorflow as tf

        if per_channel:
            y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                x, lo, hi, num_bits=num_bits, narrow_range=narrow_range
            )
        else:
            y = tf.quantization.fake_quant_with_min_max_vars(
                x, lo, hi, num_bits=num_bits, narrow_range=narrow_range
            )
    else:
        spec = QuantSpec(
            num_bits=num_bits,
            symmetric=False,
            narrow_range=narrow_range,
            axis=-1 if per_channel else None,
        )
        y = fake_quant(x, lo, hi, spec)
    return y if "float32" in str(dtype) else ops.cast(y, dtype)


class Quantizer:
    """Base class of the quantizers a :class:`QuantizeConfig` returns.

    Subclasses implement ``__call__(x, training)`` and, when they keep state,
    ``build(layer, shape, name)`` creating Keras variables on ``layer``.

    Example:
        >>> class Identity(Quantizer):
        ...     def __call__(self, x, training=False, observed=None):
        ...         return x
    """

    def build(self, layer, shape, name):
        """Creates the quantizer's variables on ``layer`` (nothing by default)."""

    def __call__(self, x, training=False, observed=None):
        raise NotImplementedError

    def get_config(self):
        """Constructor arguments."""
        return {}


class WeightQuantizer(Quantizer):
    """Symmetric narrow-range weight quantizer with ranges taken from the weight itself.

    The weight is viewed as ``(inputs, outputs)`` where ``outputs`` is the product
    of its last ``output_axes`` axes (e.g. 2 for an attention query kernel
    ``(d_model, heads, head_dim)``), giving one range per output channel.

    Args:
        num_bits: Weight bits (2 to 8).
        per_channel: One range per output channel, else one per tensor.
        group_size: ``None`` or group-wise ranges of ``group_size`` input rows
            (computed in ``keras.ops``; weight-only schemes).
        output_axes: Number of trailing axes forming the output channel.

    Example:
        >>> q = WeightQuantizer(num_bits=4)
        >>> w = q(keras.ops.convert_to_tensor([[0.7, 1.0], [-0.35, 0.1]]))
        >>> [[round(float(v), 2) for v in row] for row in w]
        [[0.7, 1.0], [-0.3, 0.14]]
    """

    def __init__(self, num_bits=8, per_channel=True, group_size=None, output_axes=1):
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 2 <= num_bits <= 8:
            raise ValueError(
                f"`num_bits` must be an integer in [2, 8]. Received: num_bits={num_bits!r}"
            )
        self.num_bits = num_bits
        self.per_channel = bool(per_channel)
        self.group_size = group_size
        self.output_axes = int(output_axes)

    def __call__(self, w, training=False, observed=None):
        w = ops.convert_to_tensor(w)
        shape = tuple(w.shape)
        if not self.per_channel and self.group_size is None:
            r = ops.maximum(ops.max(ops.abs(ops.stop_gradient(w))), _MIN_RANGE)
            return fake_quant_range(w, -r, r, self.num_bits, True)
        outputs = math.prod(shape[len(shape) - self.output_axes :]) if self.output_axes else 1
        flat = ops.reshape(w, (-1, outputs))
        if self.group_size is not None:
            spec = QuantSpec(
                num_bits=self.num_bits,
                symmetric=True,
                narrow_range=True,
                axis=-1 if self.per_channel else None,
                group_size=self.group_size,
                group_axis=0,
            )
            from keras_llmopt._src.quantization.quantizers import fake_quant_weights

            return ops.reshape(fake_quant_weights(flat, spec), shape)
        r = ops.maximum(ops.max(ops.abs(ops.stop_gradient(flat)), axis=0), _MIN_RANGE)
        # keras.ops maths, not TensorFlow's per-channel FakeQuant op: the TFLite converter
        # cannot transpose a per-channel FakeQuant constant into FULLY_CONNECTED's
        # (outputs, inputs) layout, but it quantizes a float kernel per output channel
        # itself, with the same scale (max|w| / qmax), so the codes are exactly ours.
        spec = QuantSpec(num_bits=self.num_bits, symmetric=True, narrow_range=True, axis=-1)
        return ops.reshape(fake_quant(flat, -r, r, spec), shape)

    def get_config(self):
        return {
            "num_bits": self.num_bits,
            "per_channel": self.per_channel,
            "group_size": self.group_size,
            "output_axes": self.output_axes,
        }


_calibration = threading.local()


@contextlib.contextmanager
def observing_float_activations():
    """Within the block (on this thread), activation quantizers observe and pass through.

    Post-training calibration takes every range from the float model's activations:
    a range set early in the pass would otherwise clip what the layers after it see.

    Example:
        >>> layer = keras.layers.Layer()
        >>> q = ActivationQuantizer()
        >>> q.build(layer, (None, 1), "out")
        >>> with observing_float_activations():
        ...     float(q(keras.ops.convert_to_tensor([[100.0]]))[0, 0])
        100.0
    """
    previous = getattr(_calibration, "active", False)
    _calibration.active = True
    try:
        yield
    finally:
        _calibration.active = previous


class ActivationQuantizer(Quantizer):
    """Activation quantizer with a moving min/max range learned while training.

    In a training call the range variables are updated from the batch (the first
    batch sets them) and the updated range quantizes the batch; in inference the
    stored range is used. ``margin`` lowers the range's minimum by that much
    (attention scores: room for the masked positions' fill, see ``attention.py``).

    Args:
        num_bits: 8 or 16 (any of 2 to 16 works in Keras).
        symmetric: Range ``[-r, r]`` with zero point 0 (16-bit activations).
        momentum: Moving-average decay (tfmot: 0.999).
        margin: Non-negative amount subtracted from the minimum.

    Example:
        >>> layer = keras.layers.Layer()
        >>> q = ActivationQuantizer()
        >>> q.build(layer, (None, 4), "out")
        >>> y = q(keras.ops.convert_to_tensor([[-1.0, 0.5, 2.0, 3.0]]), training=True)
        >>> [round(float(v), 2) for v in q.range()]
        [-1.0, 3.0]
    """

    def __init__(self, num_bits=8, symmetric=False, momentum=0.999, margin=0.0):
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 2 <= num_bits <= 16:
            raise ValueError(
                f"`num_bits` must be an integer in [2, 16]. Received: num_bits={num_bits!r}"
            )
        if not isinstance(margin, int | float) or margin < 0:
            raise ValueError(f"`margin` must be a number >= 0. Received: margin={margin!r}")
        self.num_bits = num_bits
        self.symmetric = bool(symmetric)
        self.momentum = float(momentum)
        self.margin = float(margin)
        self.observer = None

    def build(self, layer, shape, name):
        self.observer = observers.MovingMinMax(momentum=self.momentum, name=name)
        self.observer.build(layer)

    def range(self, lo=None, hi=None):
        """The effective ``(min, max)`` (margin and symmetry applied) of the stored range."""
        if lo is None:
            lo, hi = self.observer.range()
        lo = ops.minimum(lo, 0.0) - self.margin
        hi = ops.maximum(ops.maximum(hi, 0.0), lo + _MIN_RANGE)
        if self.symmetric:
            r = ops.maximum(ops.maximum(ops.abs(lo), ops.abs(hi)), _MIN_RANGE)
            return -r, r
        return lo, hi

    def set_range(self, lo, hi):
        """Assigns an observed range (before margin/symmetry), e.g. from calibration."""
        self.observer.min.assign(ops.convert_to_tensor(lo, "float32"))
        self.observer.max.assign(ops.convert_to_tensor(hi, "float32"))
        self.observer.count.assign(ops.maximum(self.observer.count, 1))

    def __call__(self, x, training=False, observed=None):
        if self.observer is None:
            raise ValueError("ActivationQuantizer is not built: call build(layer, shape, name).")
        observed = x if observed is None else observed
        self.observe(observed)
        if getattr(_calibration, "active", False):
            return x  # calibrating: every range sees the float model's activations
        if training:
            lo, hi = self.observer.update(ops.stop_gradient(observed))
            lo, hi = self.range(lo, hi)
        else:
            lo, hi = self.range()
        return fake_quant_range(x, lo, hi, self.num_bits, self.symmetric)

    def observe(self, observed):
        """Receives each tensor the range is taken from (a no-op; calibration hooks it)."""

    def get_config(self):
        return {
            "num_bits": self.num_bits,
            "symmetric": self.symmetric,
            "momentum": self.momentum,
            "margin": self.margin,
        }


class FixedRangeQuantizer(Quantizer):
    """Fake quantization over a fixed range (e.g. softmax probabilities ``[0, 1)``).

    Args:
        min_value: Range minimum.
        max_value: Range maximum.
        num_bits: Bits.
        narrow_range: Drop the lowest code.

    Example:
        >>> q = FixedRangeQuantizer(0.0, 255 / 256)
        >>> float(q(keras.ops.convert_to_tensor([0.5])) [0])
        0.5
    """

    def __init__(self, min_value, max_value, num_bits=8, narrow_range=False):
        if not min_value < max_value:
            raise ValueError(
                "`min_value` must be below `max_value`. "
                f"Received: min_value={min_value!r}, max_value={max_value!r}"
            )
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self.num_bits = int(num_bits)
        self.narrow_range = bool(narrow_range)

    def __call__(self, x, training=False, observed=None):
        return fake_quant_range(x, self.min_value, self.max_value, self.num_bits, self.narrow_range)

    def get_config(self):
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "num_bits": self.num_bits,
            "narrow_range": self.narrow_range,
        }
