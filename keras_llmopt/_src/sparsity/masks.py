"""Magnitude-mask maths (``keras.ops`` only: TensorFlow and JAX).

Every weight is seen through a 2-D "grouping view" ``(rows, cols)`` where the
columns run along the layer's *input* dimension (the weight's input axes moved
last and flattened). Block sparsity pools ``|w|`` over ``(block_rows,
block_cols)`` tiles of that view; N:M sparsity keeps the ``m`` largest of each
run of ``n`` consecutive columns.

The mask prunes an EXACT count ``round(sparsity * size)``: the entries ranked
lowest in ascending order with ties broken by index, found with one ``sort``
(no ``top_k``, whose ``k`` would have to be static on JAX).
Weights pruned before rank below everything else, so sparsity never decreases
and a pruned weight stays pruned.
"""

import dataclasses
import math

from keras import ops

POOLING_TYPES = ("AVG", "MAX")


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """How to turn a weight into its 2-D grouping view and back.

    Attributes:
        shape: The weight's shape.
        perm: Transpose putting the output axes first, input axes last.
        rows: Product of the output-axis sizes.
        cols: Product of the input-axis sizes.
    """

    shape: tuple
    perm: tuple
    rows: int
    cols: int

    @property
    def inverse_perm(self):
        """The permutation undoing :attr:`perm`."""
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        return tuple(inv)


def view_spec(shape, input_axes) -> ViewSpec:
    """Builds the grouping view of a weight.

    Args:
        shape: The weight's shape.
        input_axes: Axes running along the layer's input dimension.

    Returns:
        A :class:`ViewSpec`.

    Example:
        >>> view_spec((8, 3), (0,))  # Dense kernel (in, out) -> view (out, in)
        ViewSpec(shape=(8, 3), perm=(1, 0), rows=3, cols=8)
    """
    shape = tuple(int(s) for s in shape)
    input_axes = tuple(sorted(set(input_axes)))
    other = tuple(a for a in range(len(shape)) if a not in input_axes)
    rows = math.prod(shape[a] for a in other)
    cols = math.prod(shape[a] for a in input_axes)
    return ViewSpec(shape, other + input_axes, rows, cols)


def to_view(x, spec: ViewSpec):
    """The 2-D grouping view of ``x``."""
    return ops.reshape(ops.transpose(x, spec.perm), (spec.rows, spec.cols))


def from_view(v, spec: ViewSpec):
    """Inverse of :func:`to_view`."""
    transposed = tuple(spec.shape[a] for a in spec.perm)
    return ops.transpose(ops.reshape(v, transposed), spec.inverse_perm)


def validate_settings(shape, input_axes, block_size, block_pooling_type, m_by_n, where):
    """Checks block / N:M settings against a weight; raises a ValueError naming ``where``.

    Args:
        shape: Weight shape.
        input_axes: Its input axes.
        block_size: ``(block_rows, block_cols)`` on the grouping view.
        block_pooling_type: "AVG" or "MAX".
        m_by_n: ``None`` or ``(m, n)``.
        where: Description of the weight for messages (e.g. "layer 'dense' kernel").

    Raises:
        ValueError: On bad or incompatible settings.

    Example:
        >>> validate_settings((8, 4), (0,), (1, 1), "AVG", (2, 4), "layer 'd' kernel")
    """
    spec = view_spec(shape, input_axes)
    block_size = check_block_size(block_size)
    check_pooling(block_pooling_type)
    bh, bw = block_size
    if spec.rows % bh or spec.cols % bw:
        raise ValueError(
            f"block_size={block_size} does not divide the (outputs, inputs) view "
            f"({spec.rows}, {spec.cols}) of {where} (weight shape {spec.shape}). "
            f"Use a block size that divides both. Received: block_size={block_size}"
        )
    if m_by_n is not None:
        m, n = check_m_by_n(m_by_n)
        if spec.cols % n:
            raise ValueError(
                f"sparsity_m_by_n={m_by_n}: the input dimension {spec.cols} of {where} "
                f"(weight shape {spec.shape}) is not divisible by n={n}. "
                f"Ignore this layer or pick another n. Received: sparsity_m_by_n={m_by_n}"
            )
        if block_size != (1, 1):
            raise ValueError(
                "sparsity_m_by_n cannot be combined with block_size. "
                f"Received: sparsity_m_by_n={m_by_n}, block_size={block_size}"
            )


def check_block_size(block_size):
    """Validates ``block_size``; returns it as a tuple of two ints >= 1."""
    try:
        bh, bw = block_size
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (bh, bw))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "`block_size` must be a pair of integers >= 1 (rows, cols of the "
            f"(outputs, inputs) view). Received: block_size={block_size!r}"
        )
    return (bh, bw)


def check_pooling(block_pooling_type):
    """Validates ``block_pooling_type`` ("AVG" or "MAX")."""
    if block_pooling_type not in POOLING_TYPES:
        raise ValueError(
            f"`block_pooling_type` must be one of {POOLING_TYPES}. "
            f"Received: block_pooling_type={block_pooling_type!r}"
        )
    return block_pooling_type


def check_m_by_n(m_by_n):
    """Validates ``sparsity_m_by_n`` (m < n, both >= 1); returns ``(m, n)``."""
    try:
        m, n = m_by_n
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (m, n)) and 0 < m < n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "`sparsity_m_by_n` must be a pair (m, n) of integers with 0 < m < n, e.g. (2, 4). "
            f"Received: sparsity_m_by_n={m_by_n!r}"
        )
    return (m, n)


def _ranks(x, axis=-1):
    # rank[i] = position of x[i] in ascending order (a permutation: ties broken by index).
    return ops.argsort(ops.argsort(x, axis=axis), axis=axis)


def _exact_mask(key, sparsity, min_pruned):
    """1 where ``key`` is not among the ``round(sparsity*size)`` smallest (1-D).

    The entries pruned are those of rank below ``n_prune`` in the ascending
    order with ties broken by index (the order of a stable ``argsort``). One
    ``sort`` finds the smallest kept key ``t``; entries equal to ``t`` are
    ranked among themselves by index with a ``cumsum``. This is the double
    ``argsort`` rank's mask exactly, at about half its cost (one sort, not two).
    """
    size = key.shape[0]
    if size == 0:
        return ops.ones((0,), "float32")
    n_prune = ops.cast(ops.round(ops.cast(sparsity, "float32") * float(size)), "int32")
    n_prune = ops.minimum(ops.maximum(n_prune, min_pruned), size)
    kept = ops.take(ops.sort(key), ops.minimum(n_prune, size - 1))
    below = ops.sum(ops.cast(ops.less(key, kept), "int32"))
    tied = ops.equal(key, kept)
    tie_rank = ops.cumsum(ops.cast(tied, "int32")) - 1
    keep = ops.logical_or(
        ops.greater(key, kept),
        ops.logical_and(tied, ops.greater_equal(tie_rank, n_prune - below)),
    )
    return ops.cast(ops.logical_and(keep, ops.less(n_prune, size)), "float32")


def magnitude_mask(
    weight,
    old_mask,
    sparsity,
    input_axes,
    block_size=(1, 1),
    block_pooling_type="AVG",
    m_by_n=None,
):
    """Computes a new mask and threshold for one weight.

    Args:
        weight: The weight tensor.
        old_mask: Its current mask (same shape, 0/1); pruned entries stay pruned.
        sparsity: Scalar (tensor) fraction to prune; ignored when ``m_by_n``
            is set.
        input_axes: The weight's input axes (see :func:`view_spec`).
        block_size: ``(rows, cols)`` tiles of the grouping view pruned together.
        block_pooling_type: "AVG" or "MAX" pooling of ``|w|`` over a tile.
        m_by_n: ``(m, n)`` to keep at most ``m`` non-zeros in each run of ``n``
            along the input dimension.

    Returns:
        ``(mask, threshold)``: float32 mask of the weight's shape and the
        largest magnitude pruned (float32 scalar).

    Example:
        >>> import numpy as np
        >>> from keras import ops
        >>> w = np.arange(1.0, 9.0, dtype="float32").reshape(4, 2)
        >>> mask, _ = magnitude_mask(w, np.ones_like(w), 0.5, (0,))
        >>> float(ops.convert_to_numpy(mask).sum())
        4.0
    """
    spec = view_spec(weight.shape, input_axes)
    w = ops.abs(to_view(ops.cast(weight, "float32"), spec))
    old = to_view(ops.cast(old_mask, "float32"), spec)
    if m_by_n is not None:
        m, n = m_by_n
        groups = ops.reshape(w, (spec.rows, spec.cols // n, n))
        old_g = ops.reshape(old, (spec.rows, spec.cols // n, n))
        key = ops.where(old_g > 0, groups, -1.0)
        keep = ops.cast(ops.greater_equal(_ranks(key, axis=-1), n - m), "float32")
        mask = ops.reshape(keep * old_g, (spec.rows, spec.cols))
    else:
        bh, bw = block_size
        if (bh, bw) == (1, 1):
            pooled, pooled_old = w, old
        else:
            tiles = ops.reshape(w, (spec.rows // bh, bh, spec.cols // bw, bw))
            tiles_old = ops.reshape(old, (spec.rows // bh, bh, spec.cols // bw, bw))
            if block_pooling_type == "MAX":
                pooled = ops.max(tiles, axis=(1, 3))
            else:
                pooled = ops.mean(tiles, axis=(1, 3))
            pooled_old = ops.max(tiles_old, axis=(1, 3))
        flat = ops.reshape(pooled, (-1,))
        flat_old = ops.reshape(pooled_old, (-1,))
        key = ops.where(flat_old > 0, flat, -1.0)
        already = ops.cast(ops.sum(ops.cast(flat_old <= 0, "int32")), "int32")
        flat_mask = _exact_mask(key, sparsity, already)
        mask = ops.reshape(flat_mask, pooled.shape)
        if (bh, bw) != (1, 1):
            mask = ops.repeat(ops.repeat(mask, bh, axis=0), bw, axis=1)
    threshold = ops.max(ops.where(mask > 0, 0.0, w))
    return from_view(mask, spec), ops.cast(threshold, "float32")
