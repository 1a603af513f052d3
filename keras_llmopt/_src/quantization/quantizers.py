"""Uniform (affine) quantization maths: specs, scales, fake quant with the STE, weight codes.

Written with ``keras.ops`` so it runs inside a compiled train step on TensorFlow
and JAX. Conventions are TFLite's:

* Integers are signed (``int8`` is ``[-128, 127]``; ``narrow_range`` drops the
  lowest code, giving ``[-127, 127]``). A ``uint8`` zero point is the signed one
  plus ``2 ** (num_bits - 1)``; the dequantized values are the same.
* Symmetric ranges have zero point 0 and ``scale = max(|min|, |max|) / qmax``
  (int8 weights: symmetric, narrow range, per output channel).
* Asymmetric ranges are nudged exactly as ``tf.quantization.fake_quant_with_min_max_vars``
  does, so that 0.0 is exactly representable.

Range tensors (``min``, ``max``, ``scale``, ``zero_point``) are either scalars
(per tensor), of shape ``(C,)`` for one channel axis (TensorFlow's per-channel
convention), or in "keepdims" form: the tensor's rank, size 1 on reduced axes and
``shape[group_axis] // group_size`` on the group axis for group-wise ranges.
"""

import dataclasses

from keras import ops

# Keeps a zero range (e.g. an all-zero tensor) finite instead of dividing by zero.
_MIN_SCALE = 1e-30


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        accepted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")
    if high is not None and value > high:
        raise ValueError(
            f"`{name}` must be an integer in [{low}, {high}]. Received: {name}={value!r}"
        )


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How a tensor is quantized: bit width, symmetry and range granularity.

    Attributes:
        num_bits: Integer bit width, 2 to 16.
        symmetric: Zero point fixed at 0 and range ``[-r, r]`` (weights), or an
            affine range with a nudged zero point (activations).
        narrow_range: Drop the lowest code (``[-127, 127]`` for int8), as TFLite
            requires for int8 weights.
        axis: ``None`` for one range per tensor, or an axis (or tuple of axes)
            that keeps one range per index (per output channel).
        group_size: ``None``, or split ``group_axis`` into contiguous groups of
            this many elements, each with its own range (group-wise int4).
        group_axis: The axis split into groups (a Dense kernel's input axis, 0).

    Example:
        >>> spec = QuantSpec(num_bits=8, symmetric=True, narrow_range=True, axis=-1)
        >>> spec.qmin, spec.qmax
        (-127, 127)
        >>> QuantSpec.from_config(spec.get_config()) == spec
        True
    """

    num_bits: int = 8
    symmetric: bool = True
    narrow_range: bool = True
    axis: int | tuple | None = None
    group_size: int | None = None
    group_axis: int = 0

    def __post_init__(self):
        _check_int("num_bits", self.num_bits, 2, 16)
        for name in ("symmetric", "narrow_range"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"`{name}` must be a bool. Received: {name}={getattr(self, name)!r}"
                )
        axis = self.axis
        if isinstance(axis, list):
            axis = tuple(axis)
            object.__setattr__(self, "axis", axis)
        if axis is not None:
            axes = axis if isinstance(axis, tuple) else (axis,)
            if not axes or any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
                raise ValueError(
                    "`axis` must be None (per tensor), an integer or a non-empty tuple of "
                    f"integers (per channel). Received: axis={self.axis!r}"
                )
            if len(set(axes)) != len(axes):
                raise ValueError(f"`axis` has repeated entries. Received: axis={self.axis!r}")
        if self.group_size is not None:
            _check_int("group_size", self.group_size, 1)
        if isinstance(self.group_axis, bool) or not isinstance(self.group_axis, int):
            raise ValueError(
                f"`group_axis` must be an integer. Received: group_axis={self.group_axis!r}"
            )
        if self.group_size is not None and self.group_axis in self.axes:
            raise ValueError(
                "`group_axis` cannot also be a per-channel `axis`. "
                f"Received: axis={self.axis!r}, group_axis={self.group_axis!r}"
            )

    @property
    def axes(self):
        """``axis`` as a tuple (empty for per tensor)."""
        if self.axis is None:
            return ()
        return self.axis if isinstance(self.axis, tuple) else (self.axis,)

    @property
    def qmin(self):
        """Smallest signed integer code."""
        return -(2 ** (self.num_bits - 1)) + int(self.narrow_range)

    @property
    def qmax(self):
        """Largest signed integer code."""
        return 2 ** (self.num_bits - 1) - 1

    @property
    def storage_dtype(self):
        """The integer dtype holding the codes (``int8`` up to 8 bits, else ``int16``)."""
        return "int8" if self.num_bits <= 8 else "int16"

    def get_config(self):
        """The spec as a JSON-friendly dict."""
        config = dataclasses.asdict(self)
        if isinstance(self.axis, tuple):
            config["axis"] = list(self.axis)
        return config

    @classmethod
    def from_config(cls, config):
        """Rebuilds a spec from :meth:`get_config`'s dict."""
        return cls(**config)


def _normalized_axes(spec, rank, where="tensor"):
    axes = []
    for a in spec.axes + ((spec.group_axis,) if spec.group_size else ()):
        if not -rank <= a < rank:
            raise ValueError(
                f"Axis {a} of the quantization spec is out of range for a {where} of rank "
                f"{rank}. Received: axis={spec.axis!r}, group_axis={spec.group_axis!r}"
            )
        axes.append(a % rank)
    channel = tuple(axes[: len(spec.axes)])
    group = axes[-1] if spec.group_size else None
    return channel, group


def _check_groups(shape, spec, group, where):
    if group is None:
        return
    if shape[group] is None or shape[group] % spec.group_size:
        raise ValueError(
            f"group_size={spec.group_size} does not divide axis {group} (size {shape[group]}) "
            f"of the {where} with shape {tuple(shape)}. Received: group_size={spec.group_size}"
        )


def _range_shape(shape, spec):
    """Keepdims shape of a range tensor for a tensor of ``shape``."""
    channel, group = _normalized_axes(spec, len(shape))
    out = []
    for i, size in enumerate(shape):
        if i == group:
            out.append(size // spec.group_size)
        elif i in channel:
            out.append(size)
        else:
            out.append(1)
    return tuple(out)


def _to_keepdims(value, shape, spec, name):
    """Reshapes a range tensor to broadcast against a tensor of ``shape``, groups expanded."""
    value = ops.convert_to_tensor(value, "float32") if not _is_int(value) else value
    target = _range_shape(shape, spec)
    channel, group = _normalized_axes(spec, len(shape))
    if len(value.shape) != len(shape):
        size = 1
        for s in value.shape:
            size *= s
        expected = 1
        for s in target:
            expected *= s
        if size != expected or (group is not None and len(value.shape) != len(shape)):
            raise ValueError(
                f"`{name}` has shape {tuple(value.shape)}, which does not fit a tensor of shape "
                f"{tuple(shape)} quantized with axis={spec.axis!r}, group_size={spec.group_size!r}"
                f". Expected shape {target} (or the per-channel sizes for `axis`). "
                f"Received: {name}.shape={tuple(value.shape)}"
            )
        value = ops.reshape(value, target)
    elif tuple(value.shape) != target:
        raise ValueError(
            f"`{name}` has shape {tuple(value.shape)}; expected {target} for a tensor of shape "
            f"{tuple(shape)} with axis={spec.axis!r}, group_size={spec.group_size!r}. "
            f"Received: {name}.shape={tuple(value.shape)}"
        )
    if group is not None:
        value = ops.repeat(value, spec.group_size, axis=group)
    return value


def _is_int(value):
    dtype = getattr(value, "dtype", None)
    return dtype is not None and "int" in str(dtype)


def compute_scale_zero_point(min_value, max_value, spec):
    """Scale and zero point of a range, with TFLite's conventions.

    Symmetric: ``scale = max(|min|, |max|) / qmax`` and zero point 0.
    Asymmetric: ``scale = (max - min) / (qmax - qmin)`` and the zero point is
    ``qmin - min / scale`` rounded and clamped to the code range (the nudge of
    ``tf.quantization.fake_quant_with_min_max_vars``), so 0.0 is a code.

    Args:
        min_value: Range minimum (scalar or range tensor).
        max_value: Range maximum (same shape).
        spec: A :class:`QuantSpec`.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of the ranges' shape.

    Example:
        >>> spec = QuantSpec(num_bits=8, symmetric=True, narrow_range=True)
        >>> scale, zp = compute_scale_zero_point(-2.0, 1.0, spec)
        >>> round(float(scale) * 127, 5), int(zp)
        (2.0, 0)
        >>> asym = QuantSpec(num_bits=8, symmetric=False, narrow_range=False)
        >>> scale, zp = compute_scale_zero_point(-1.0, 3.0, asym)
        >>> round(float(scale) * 255, 5), int(zp)
        (4.0, -64)
    """
    min_value = ops.convert_to_tensor(min_value, "float32")
    max_value = ops.convert_to_tensor(max_value, "float32")
    if spec.symmetric:
        bound = ops.maximum(ops.abs(min_value), ops.abs(max_value))
        scale = ops.maximum(bound / float(spec.qmax), _MIN_SCALE)
        return scale, ops.zeros_like(scale, dtype="int32")
    # The nudge in TensorFlow's unsigned code domain [narrow, 2**bits - 1], with the
    # same float32 operations and round-half-up, so results match it bit for bit.
    offset = 2 ** (spec.num_bits - 1)
    quant_min = float(spec.qmin + offset)
    quant_max = float(spec.qmax + offset)
    scale = ops.maximum((max_value - min_value) / (quant_max - quant_min), _MIN_SCALE)
    zero_point_from_min = quant_min - min_value / scale
    nudged = ops.clip(ops.floor(zero_point_from_min + 0.5), quant_min, quant_max)
    return scale, ops.cast(nudged, "int32") - offset


def _nudged_range(min_value, max_value, spec):
    scale, zero_point = compute_scale_zero_point(min_value, max_value, spec)
    zp = ops.cast(zero_point, "float32")
    return scale, (spec.qmin - zp) * scale, (spec.qmax - zp) * scale


def fake_quant(x, min_value, max_value, spec):
    """Quantize-dequantize ``x`` with straight-through gradients (clipped STE).

    The forward value is ``tf.quantization.fake_quant_with_min_max_vars`` (or its
    per-channel variant) for the same range: ``x`` is clamped to the nudged range,
    rounded half up to the same integer code and mapped back (TensorFlow's kernel
    fuses the last multiply-add, so values may differ from it in the last bit).
    Gradients follow TensorFlow's: ``x`` gets the upstream gradient inside the
    nudged range and 0 outside; ``min`` and ``max`` get the summed gradient of
    the values clamped to them. Built from
    ``stop_gradient`` and masks (the ``x + stop_gradient(q(x) - x)`` pattern,
    arranged so the forward value is exactly the quantized one), so it works in
    ``keras.ops`` on every backend.

    Args:
        x: Float tensor.
        min_value: Range minimum: scalar, ``(C,)`` for one ``spec.axis``, or keepdims.
        max_value: Range maximum, same shape as ``min_value``.
        spec: A :class:`QuantSpec`.

    Returns:
        A float32 tensor like ``x`` holding only representable values.

    Example:
        >>> spec = QuantSpec(num_bits=8, symmetric=False, narrow_range=False)
        >>> y = fake_quant([-1.0, 0.0, 0.3, 9.0], -1.0, 1.0, spec)
        >>> [round(float(v), 4) for v in y]
        [-0.9961, 0.0, 0.298, 1.0039]
    """
    x = ops.convert_to_tensor(x)
    if "float" not in str(x.dtype):
        x = ops.cast(x, "float32")
    _check_groups(x.shape, spec, _normalized_axes(spec, len(x.shape))[1], "tensor")
    if spec.axes or spec.group_size:
        min_value = _to_keepdims(min_value, x.shape, spec, "min_value")
        max_value = _to_keepdims(max_value, x.shape, spec, "max_value")
    scale, nudged_min, nudged_max = _nudged_range(min_value, max_value, spec)
    scale = ops.cast(scale, x.dtype)
    nudged_min = ops.cast(nudged_min, x.dtype)
    nudged_max = ops.cast(nudged_max, x.dtype)
    # Range gradients: straight through the nudge to min/max, as TensorFlow does.
    if not spec.symmetric:
        min_t = ops.cast(ops.convert_to_tensor(min_value, "float32"), x.dtype)
        max_t = ops.cast(ops.convert_to_tensor(max_value, "float32"), x.dtype)
        nudged_min = ops.stop_gradient(nudged_min) + (min_t - ops.stop_gradient(min_t))
        nudged_max = ops.stop_gradient(nudged_max) + (max_t - ops.stop_gradient(max_t))
    below = ops.cast(ops.less(x, nudged_min), x.dtype)
    above = ops.cast(ops.greater(x, nudged_max), x.dtype)
    inside = 1.0 - below - above
    clamped = ops.minimum(ops.maximum(x, nudged_min), nudged_max)
    shifted = ops.stop_gradient(clamped - nudged_min)
    quantized = ops.floor(shifted * (1.0 / ops.stop_gradient(scale)) + 0.5)
    quantized = quantized * ops.stop_gradient(scale) + ops.stop_gradient(nudged_min)
    surrogate = x * inside + nudged_min * below + nudged_max * above
    # ``surrogate - stop_gradient(surrogate)`` is exactly 0 forward, so the value is
    # exactly ``quantized`` (``x + stop_gradient(q - x)`` would add a rounding error).
    return quantized + (surrogate - ops.stop_gradient(surrogate))


def tensor_range(x, spec):
    """The min/max of ``x`` at the spec's granularity, always including 0.

    Args:
        x: Tensor (typically a weight).
        spec: A :class:`QuantSpec`.

    Returns:
        ``(min, max)`` float32 tensors in keepdims form (see the module docstring).

    Example:
        >>> spec = QuantSpec(axis=-1)
        >>> lo, hi = tensor_range([[1.0, -2.0], [3.0, 0.5]], spec)
        >>> tuple(lo.shape), [float(v) for v in hi[0]]
        ((1, 2), [3.0, 0.5])
    """
    x = ops.convert_to_tensor(x, "float32")
    shape = tuple(x.shape)
    channel, group = _normalized_axes(spec, len(shape))
    _check_groups(shape, spec, group, "tensor")
    if group is not None:
        grouped = shape[:group] + (shape[group] // spec.group_size, spec.group_size)
        grouped += shape[group + 1 :]
        x = ops.reshape(x, grouped)
        keep = {a if a < group else a + 1 for a in channel} | {group}
    else:
        keep = set(channel)
    reduce_axes = tuple(a for a in range(len(x.shape)) if a not in keep)
    lo = ops.minimum(ops.min(x, axis=reduce_axes, keepdims=True), 0.0)
    hi = ops.maximum(ops.max(x, axis=reduce_axes, keepdims=True), 0.0)
    target = _range_shape(shape, spec)
    return ops.reshape(lo, target), ops.reshape(hi, target)


def quantize_weights(w, spec):
    """Quantizes a weight to integer codes with min/max ranges (weight-only int8/int4).

    Args:
        w: Float weight tensor.
        spec: A :class:`QuantSpec` (e.g. int8 symmetric per output channel, or
            int4 with ``group_size=128``).

    Returns:
        ``(codes, scale, zero_point)``: codes in ``spec.storage_dtype`` with
        ``w``'s shape, float32 scale and int32 zero point in keepdims form.
        ``dequantize(codes, scale, zero_point, spec)`` is within ``scale / 2``
        of ``w``.

    Example:
        >>> import numpy as np
        >>> w = np.array([[0.5, -1.0], [0.25, 2.0]], "float32")
        >>> spec = QuantSpec(num_bits=8, axis=-1)
        >>> codes, scale, zp = quantize_weights(w, spec)
        >>> codes.tolist() if hasattr(codes, "tolist") else np.asarray(codes).tolist()
        [[127, -63], [64, 127]]
    """
    w = ops.convert_to_tensor(w, "float32")
    lo, hi = tensor_range(w, spec)
    scale, zero_point = compute_scale_zero_point(lo, hi, spec)
    full_scale = _to_keepdims(scale, w.shape, spec, "scale")
    full_zp = ops.cast(_to_keepdims(zero_point, w.shape, spec, "zero_point"), "float32")
    codes = ops.floor(w / full_scale + 0.5) + full_zp
    codes = ops.clip(codes, float(spec.qmin), float(spec.qmax))
    return ops.cast(codes, spec.storage_dtype), scale, zero_point


def dequantize(codes, scale, zero_point, spec):
    """Maps integer codes back to floats: ``(codes - zero_point) * scale``.

    Args:
        codes: Integer codes (from :func:`quantize_weights`).
        scale: Scale in keepdims form (or scalar / ``(C,)``).
        zero_point: Zero point, same shape as ``scale``.
        spec: The :class:`QuantSpec` used to quantize.

    Returns:
        A float32 tensor of the codes' shape.

    Example:
        >>> spec = QuantSpec(num_bits=4)
        >>> codes, scale, zp = quantize_weights([0.7, -0.35, 0.0], spec)
        >>> [round(float(v), 2) for v in dequantize(codes, scale, zp, spec)]
        [0.7, -0.3, 0.0]
    """
    codes = ops.cast(ops.convert_to_tensor(codes), "float32")
    if spec.axes or spec.group_size:
        scale = _to_keepdims(ops.convert_to_tensor(scale, "float32"), codes.shape, spec, "scale")
        zero_point = _to_keepdims(
            ops.cast(ops.convert_to_tensor(zero_point), "float32"), codes.shape, spec, "zero_point"
        )
    return (codes - ops.cast(zero_point, "float32")) * ops.cast(scale, "float32")


def fake_quant_weights(w, spec):
    """Fake-quantizes a weight with its own min/max ranges (QAT of weights).

    Args:
        w: Float weight tensor.
        spec: A :class:`QuantSpec`.

    Returns:
        The quantize-dequantized weight; gradients pass straight through.

    Example:
        >>> spec = QuantSpec(num_bits=4, axis=-1)
        >>> y = fake_quant_weights([[0.7, 1.0], [-0.35, 0.1]], spec)
        >>> [[round(float(v), 2) for v in row] for row in y]
        [[0.7, 1.0], [-0.3, 0.14]]
    """
    w = ops.convert_to_tensor(w, "float32")
    lo, hi = tensor_range(ops.stop_gradient(w), spec)
    return fake_quant(w, lo, hi, spec)
