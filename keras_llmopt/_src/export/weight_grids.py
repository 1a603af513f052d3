"""Integer weight grids a one-shot quantizer chose, kept exactly in a quantized ``.tflite``.

GPTQ or AWQ leave float kernels on a symmetric grid, ``codes * scales`` per output row
and input group. The AI Edge Quantizer (``"int4"``) and the converter's dynamic-range
mode (``"dynamic_int8"``) recompute each scale from the group's largest magnitude,
re-rounding every group whose largest code is below ``2**(bits - 1) - 1``.
:func:`keep_grids` finds each grid's weight in the quantized file and overwrites its
codes and scales in place, so the file dequantizes to ``grid.dequantize()`` bit for
bit; :func:`check_grids_kept` proves it and :func:`stored_weights` reads weights back.
Where the converter multiplied a constant into a weight (attention's ``1/sqrt(d)`` on
the query kernel) the file keeps the grid's codes with its scales times that constant.
"""

import dataclasses

import numpy as np

from keras_llmopt._src.export.compact import _as_bytes
from keras_llmopt._src.export.stored_weights import StoredWeight, read_weights, steps

MODE_BITS = {"int4": 4, "dynamic_int8": 8}  # the TFLite modes that keep grids, and their bits


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class WeightGrid:
    """One layer's weight on a symmetric integer grid: ``codes * scales`` (zero point 0).

    Attributes:
        name: What the grid is called in messages (e.g. the layer's path).
        codes: ``np.int8`` array ``(out_features, in_features)``, within
            ``±(2**(bits - 1) - 1)``.
        scales: ``np.float32`` array ``(out_features, n_groups)``; every value is
            finite, non-negative and exactly representable in float16.
        bits: 4 or 8.
        group_size: ``-1`` for one scale per output row, else the input columns
            sharing a scale (``in_features // n_groups``).

    Example:
        >>> grid = WeightGrid("dense", np.array([[1, -2], [3, 0]]), np.array([[0.5], [2.0]]), 4)
        >>> grid.dequantize()
        array([[ 0.5, -1. ],
               [ 6. ,  0. ]], dtype=float32)
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int = -1

    def __post_init__(self):
        codes, scales = np.asarray(self.codes), np.asarray(self.scales)
        if problem := _grid_problem(codes, scales, self.bits, self.group_size):
            raise ValueError(f"WeightGrid {self.name!r}: {problem}")
        for field, value in (("codes", codes.astype(np.int8)), ("scales", scales.astype("f4"))):
            value.flags.writeable = False
            object.__setattr__(self, field, value)

    def __repr__(self):
        out, features = self.codes.shape
        return (
            f"WeightGrid({self.name!r}, {out}x{features}, {self.bits}-bit, "
            f"{_granularity(self.group_size)})"
        )

    def dequantize(self):
        """The grid's float weight: ``codes * scales``, float32 ``(out, in)``.

        Example:
            >>> WeightGrid("d", np.ones((1, 4), np.int8), np.full((1, 2), 0.25), 4, 2).dequantize()
            array([[0.25, 0.25, 0.25, 0.25]], dtype=float32)
        """
        return self.codes.astype(np.float32) * steps(self.scales, self.codes.shape[1])


def _grid_problem(codes, scales, bits, group):
    """What is wrong with a grid's fields, or ``None``."""
    if bits not in (4, 8) or isinstance(bits, bool):
        return f"`bits` must be 4 or 8. Received: bits={bits!r}"
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        return f"`codes` must be 2-D integers (out, in). Received: {codes.dtype} {codes.shape}"
    limit = 2 ** (bits - 1) - 1
    if codes.size and np.abs(codes.astype(np.int64)).max() > limit:
        return f"{bits}-bit codes lie within ±{limit}. Received: [{codes.min()}, {codes.max()}]"
    valid = isinstance(group, (int, np.integer)) and not isinstance(group, bool)
    if not valid or not (group == -1 or group > 0 and codes.shape[1] % group == 0):
        return f"`group_size` must be -1 or divide in={codes.shape[1]}. Received: {group!r}"
    expected = (codes.shape[0], 1 if group == -1 else codes.shape[1] // group)
    if scales.shape != expected:
        return f"`scales` must have shape {expected} (out, n_groups). Received: {scales.shape}"
    scales32 = scales.astype(np.float32)
    if not np.all(np.isfinite(scales32) & (scales32 >= 0)) or not np.array_equal(
        scales32.astype(np.float16).astype(np.float32), scales32
    ):
        return "`scales` must be finite, non-negative and exactly representable in float16"
    return None


def _granularity(block_size):
    if block_size == -1:
        return "one scale per output row"
    if block_size == 0:
        return "one scale per tensor"
    return f"groups of {block_size} input columns"


@dataclasses.dataclass
class _Match:
    """A file weight within one of its steps of ``factor`` times a grid's values."""

    weight: StoredWeight
    factor: float  # 1, or a constant the converter multiplied in (attention's 1/sqrt(d))
    distance: float  # the largest difference, in the file's steps

    def scales(self, grid):
        """The scales the file holds when it keeps ``grid``, in the file's precision."""
        scaled = grid.scales.astype(np.float64) * self.factor
        return scaled.astype(self.weight.scale.dtype).astype(np.float32)


def _rounding_interval(values):
    """``(low, high)``: the float64 numbers that round to each of ``values``, in its dtype."""
    wide, kind = values.astype(np.float64), values.dtype.type
    low = (wide + np.nextafter(values, kind(-np.inf)).astype(np.float64)) / 2
    return low, (wide + np.nextafter(values, kind(np.inf)).astype(np.float64)) / 2


def _one_factor(stored, scales, dtype):
    """Whether ``stored == round_to(dtype, c * scales)`` for one constant ``c``.

    Each stored value is the rounding of every number in the interval halfway to its
    neighbours, so ``c`` must lie in every ``interval / scale``; they must overlap.
    """
    stored = stored.astype(dtype)
    low, high = _rounding_interval(stored)
    scales = scales.astype(np.float64)
    nonzero = scales > 0
    if np.any(stored[~nonzero] != 0):
        return False
    if not np.any(nonzero):
        return True
    ratios_low, ratios_high = low[nonzero] / scales[nonzero], high[nonzero] / scales[nonzero]
    return bool(ratios_low.max() <= ratios_high.min())


def _scale_factor(grid, weight):
    """The constant ``c`` the converter multiplied in, read from the file's own scales.

    The file's scale of a group is the rounding of ``c * max|codes| * grid scale / qmax``,
    so ``c`` lies in every group's rounding interval divided by that; a least-squares fit
    of the re-rounded weight is only as exact as its rounding noise. ``None`` when the
    intervals do not meet (a file whose scales were not computed that way).
    """
    stored = weight.scales()
    if stored.shape != grid.scales.shape:
        return None
    qmax = 2 ** (weight.bits - 1) - 1
    group = grid.codes.shape[1] // grid.scales.shape[1]
    peaks = np.abs(grid.codes.astype(np.float64)).reshape(len(grid.codes), -1, group).max(-1)
    low, high = _rounding_interval(stored.astype(weight.scale.dtype))
    base = peaks * grid.scales.astype(np.float64) / qmax
    used = base > 0
    if not np.any(used):
        return None
    lowest, highest = (low[used] / base[used]).max(), (high[used] / base[used]).min()
    return float((lowest + highest) / 2) if lowest <= highest else None


def _fit(grid, weight, target):
    """``_Match`` of ``weight`` to ``grid``, or ``(None, distance at factor 1)``."""
    stored, step = weight.dequantized(), steps(weight.scales(), weight.out_in[1])
    norm = float((target.astype(np.float64) ** 2).sum())
    factors = [1.0]
    if norm > 0:
        fitted = float((stored * target.astype(np.float64)).sum() / norm)
        if np.isfinite(fitted) and fitted != 0 and not np.isclose(fitted, 1.0, rtol=1e-6):
            factors.append(_scale_factor(grid, weight) or fitted)
    first = None
    for factor in factors:
        off = np.abs(stored - factor * target)
        distance = float(np.max(off / np.maximum(step, 1e-30)))
        first = distance if first is None else first
        if np.max(off - step) <= 1e-6 * abs(factor) * np.abs(target).max():
            return _Match(weight, factor, distance), None
    return None, first


def _matches(grid, weights):
    """Every ``_Match`` of ``grid`` among the file's weights of its ``(out, in)`` shape."""
    target, found, closest = grid.dequantize(), [], None
    for weight in weights:
        if weight.out_in != grid.codes.shape:
            continue
        match, distance = _fit(grid, weight, target)
        if match is not None:
            found.append(match)
        else:
            closest = min(closest or (distance, weight.key), (distance, weight.key))
    if not found:
        why = f"none has shape {grid.codes.shape} (out, in)"
        if closest:
            why = f"the closest, {closest[1]!r}, is off by {closest[0]:.3g} of its steps"
        raise ValueError(f"{grid!r} matches no int4/int8 matmul weight of the file: {why}")
    for match in found:
        weight = match.weight
        same = weight.bits == grid.bits and weight.scales().shape[1] == grid.scales.shape[1]
        if not same or weight.block_size == 0:
            raise ValueError(
                f"{grid!r} cannot be kept in the file's weight {weight.key!r}: the grid has "
                f"{grid.bits}-bit codes in {_granularity(grid.group_size)}, the file "
                f"{weight.bits}-bit codes in {_granularity(weight.block_size)}"
            )
    return found


def _assign(grids, weights):
    """``[(grid, _Match)]``: each matched file weight given to its nearest grid.

    Layers that start from equal weights (untrained models) can end on grids within a
    step of each other, so a weight may match several grids; the nearest holds it. A
    grid must hold at least one weight, or be equal to a grid that holds one of its.
    """
    nearest, candidates = {}, {}
    for grid in grids:
        if not isinstance(grid, WeightGrid):
            raise TypeError(f"`grids` must hold WeightGrid objects. Received: {grid!r}")
        candidates[id(grid)] = _matches(grid, weights)
        for match in candidates[id(grid)]:
            best = nearest.get(match.weight.key)
            if best is None or match.distance < best[1].distance:
                nearest[match.weight.key] = (grid, match)
    pairs = list(nearest.values())
    for grid in grids:
        holders = [nearest[m.weight.key][0] for m in candidates[id(grid)]]
        if not any(h is grid or np.array_equal(h.dequantize(), grid.dequantize()) for h in holders):
            keys = [m.weight.key for m in candidates[id(grid)]]
            raise ValueError(
                f"{grid!r} matches only file weights nearer to other grids ({keys}); a "
                "weight cannot hold two different grids."
            )
    return pairs


def keep_grids(quantized_content, grids):
    """Overwrites the quantized weights of ``quantized_content`` with ``grids``' codes.

    A grid's weights are the int4/int8 weights of matmul ops (in every subgraph) of
    its ``(out, in)`` shape, read with the quantized dimension as rows (FULLY_CONNECTED
    ``[out, in]``, a constant BATCH_MATMUL operand ``[in, out]``), that dequantize to
    within one of the file's steps of ``grid.dequantize()``, or of a constant times it
    (a scalar the converter folded in: then the scales written are the grid's times
    that constant, rounded once to the file's scale type). A weight within a step of
    several grids (layers that started equal) takes the nearest. The codes (int4: two
    to a byte, the first in the low nibble) and scales (float32 quantization scales, or
    blockwise int4's float16 ``<name>_scales`` tensor) are overwritten in place.

    Args:
        quantized_content: The bytes of a ``.tflite`` quantized by the AI Edge
            Quantizer or the converter's dynamic-range mode, before compaction (which
            may share one scale vector between tensors).
        grids: ``WeightGrid`` objects.

    Returns:
        The patched flatbuffer's bytes.

    Raises:
        ValueError: A grid matches no weight; its bits or granularity differ from the
            file's (naming both); every weight a grid matches is nearer to another
            grid; or the data to overwrite is shared with a tensor the grid does not
            own.

    Example:
        >>> import tensorflow as tf
        >>> grid = WeightGrid("dense", np.tile([1, 2, -3, 0], (64, 8)), np.full((64, 1), 0.5), 8)
        >>> f = tf.function(lambda x: x @ grid.dequantize().T, [tf.TensorSpec((1, 32))])
        >>> c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        >>> c.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8
        >>> check_grids_kept(keep_grids(c.convert(), [grid]), [grid])
    """
    data = bytearray(_as_bytes(quantized_content))
    weights, owners = read_weights(data)
    patches = _assign(grids, weights)
    own = {}
    for grid, match in patches:
        own.setdefault(id(grid), set()).update(match.weight.tensors)
    for grid, match in patches:
        weight = match.weight
        for vector in (weight.data, weight.scale):
            if others := owners[vector.ctypes.data] - own[id(grid)]:
                raise ValueError(
                    f"{grid!r}: the file's weight {weight.key!r} shares its data with "
                    f"{len(others)} other tensor(s) (subgraph, index) {sorted(others)[:4]}; "
                    "keep grids before compaction, which shares equal vectors."
                )
    for grid, match in patches:
        match.weight.write(grid.codes, match.scales(grid))
    return bytes(data)


def stored_weights(content):
    """The int4/int8 weights of every matmul op of a ``.tflite``, read back from the file.

    Dense, symmetric (zero point 0) weights only; sparse or asymmetric ones are not
    listed. A name that repeats in a later subgraph gets `` (subgraph <g>)`` appended.

    Args:
        content: The ``.tflite`` bytes.

    Returns:
        ``{tensor name: (codes, scales, block_size)}``: ``np.int8`` codes
        ``(out, in)``, ``np.float32`` scales ``(out, n_groups)`` and the input columns
        per scale (``-1``: one per output row; ``0``: one for the whole tensor, repeated
        over the rows).

    Example:
        >>> import tensorflow as tf
        >>> w = np.arange(-1024, 1024, dtype=np.float32).reshape(32, 64)
        >>> f = tf.function(lambda x: x @ w, [tf.TensorSpec((1, 32))])
        >>> c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        >>> c.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8
        >>> [(q.shape, s.shape, b) for q, s, b in stored_weights(c.convert()).values()]
        [((64, 32), (64, 1), -1)]
    """
    weights, _ = read_weights(_as_bytes(content))
    return {w.key: (w.codes(), w.scales(), w.block_size) for w in weights}


def check_grids_kept(content, grids):
    """Raises ``ValueError`` naming the first grid the file does not hold exactly.

    A grid is held when every matmul weight it was given (see :func:`keep_grids`)
    stores its codes and scales (times the constant the converter folded in, if any),
    so it dequantizes to ``grid.dequantize()`` bit for bit.

    Raises:
        ValueError: A grid matches no weight or a different granularity, or its
            weight differs (the message gives the largest absolute difference of the
            dequantized weights and how many codes and scales differ).

    Example:
        >>> import tensorflow as tf
        >>> grid = WeightGrid("dense", np.tile([1, 2, -3, 0], (64, 8)), np.full((64, 1), 0.5), 8)
        >>> f = tf.function(lambda x: x @ grid.dequantize().T, [tf.TensorSpec((1, 32))])
        >>> c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        >>> c.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range int8
        >>> check_grids_kept(c.convert(), [grid])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: WeightGrid('dense', 64x32, 8-bit, one scale per output row) is not kept: ...
    """
    weights, _ = read_weights(_as_bytes(content))
    for grid, match in _assign(grids, weights):
        weight, expected = match.weight, match.scales(grid)
        codes, scales = weight.codes(), weight.scales()
        kept = _one_factor(scales, grid.scales, weight.scale.dtype)
        if np.array_equal(codes, grid.codes) and kept:
            continue
        difference = float(np.abs(weight.dequantized() - grid.dequantize() * match.factor).max())
        raise ValueError(
            f"{grid!r} is not kept: the file's weight {weight.key!r} differs from it by "
            f"up to {difference:.3g} ({int(np.sum(codes != grid.codes))} codes and "
            f"{int(np.sum(scales != expected))} scales differ)"
        )


def check_mode(grids, mode):
    """Raises ``ValueError`` unless ``mode`` (a ``quantization=`` value) stores every grid.

    ``"int4"`` keeps 4-bit grids, ``"dynamic_int8"`` 8-bit ones; no other mode keeps any.

    Example:
        >>> check_mode([WeightGrid("d", np.ones((1, 2), np.int8), np.ones((1, 1)), 4)], "int4")
    """
    for grid in grids:
        if not isinstance(grid, WeightGrid):
            raise TypeError(f"`grids` must hold WeightGrid objects. Received: {grid!r}")
        if MODE_BITS.get(mode) != grid.bits:
            use = "int4" if grid.bits == 4 else "dynamic_int8"
            raise ValueError(f"{grid!r} cannot be kept with quantization={mode!r}; use {use!r}")
