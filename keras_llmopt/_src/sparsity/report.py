"""``sparsity_report``: per-layer and global sparsity, dense vs sparse-encoded bytes."""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_llmopt._src.core import layer_tree
from keras_llmopt._src.sparsity import masks as masks_lib
from keras_llmopt._src.sparsity.units import pruning_units


@dataclasses.dataclass
class WeightSparsity:
    """Sparsity of one prunable weight.

    Attributes:
        path: ``<layer path>/<weight name>``.
        shape: Weight shape.
        size: Number of entries.
        nonzeros: Entries that are (or will be, through the mask) non-zero.
        sparsity: ``1 - nonzeros / size``.
        dense_bytes: ``size * itemsize``.
        sparse_bytes: Smallest of the dense bytes, a CSR encoding of the
            ``(outputs, inputs)`` view (values + int32 column indices + int32
            row pointers) and a bitmap encoding (values + 1 bit per entry).
        encoding: "dense", "csr" or "bitmap" (the one counted in ``sparse_bytes``).
        pruned: Whether the weight has a pruning mask.
    """

    path: str
    shape: tuple
    size: int
    nonzeros: int
    sparsity: float
    dense_bytes: int
    sparse_bytes: int
    encoding: str
    pruned: bool


@dataclasses.dataclass
class SparsityReport:
    """Per-weight rows and model totals.

    Attributes:
        weights: :class:`WeightSparsity` rows.
        global_sparsity: Zeros / entries over all rows.
        pruned_sparsity: Same over pruned (masked) weights only (``nan`` if none).
        dense_bytes: Sum of dense bytes.
        sparse_bytes: Sum of sparse-encoded bytes.

    Example:
        >>> import keras
        >>> from keras_llmopt import sparsity
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
        >>> report = sparsity.sparsity_report(model)
        >>> report.global_sparsity, report.weights[0].path
        (0.0, 'a/kernel')
        >>> print(report)  # doctest: +ELLIPSIS
        weight ...
    """

    weights: list
    global_sparsity: float
    pruned_sparsity: float
    dense_bytes: int
    sparse_bytes: int

    def as_dict(self):
        """Plain data for JSON."""
        return dataclasses.asdict(self)

    def __str__(self):
        lines = [f"{'weight':<60} {'shape':<18} {'sparsity':>8} {'dense B':>10} {'sparse B':>10}"]
        for w in self.weights:
            lines.append(
                f"{w.path:<60} {str(w.shape):<18} {w.sparsity:>8.3f} {w.dense_bytes:>10} "
                f"{w.sparse_bytes:>10}"
            )
        pruned = (
            ""
            if math.isnan(self.pruned_sparsity)
            else f" (masked weights {self.pruned_sparsity:.4f})"
        )
        lines.append(
            f"global sparsity {self.global_sparsity:.4f}{pruned}; dense {self.dense_bytes} B, "
            f"sparse-encoded {self.sparse_bytes} B "
            f"({self.sparse_bytes / max(self.dense_bytes, 1):.3f}x)"
        )
        return "\n".join(lines)


def _row(path, value, input_axes, pruned):
    shape = tuple(value.shape)
    size = int(value.size)
    nonzero = value != 0
    nnz = int(nonzero.sum())
    itemsize = value.dtype.itemsize
    spec = masks_lib.view_spec(shape, input_axes)
    csr = nnz * (itemsize + 4) + (spec.rows + 1) * 4
    bitmap = nnz * itemsize + math.ceil(size / 8)
    encoding, sparse = min(
        (("dense", size * itemsize), ("csr", csr), ("bitmap", bitmap)), key=lambda e: e[1]
    )
    return WeightSparsity(
        path, shape, size, nnz, 1.0 - nnz / max(size, 1), size * itemsize, sparse, encoding, pruned
    )


def sparsity_report(model):
    """Measures the sparsity of every prunable weight of a pruned or stripped model.

    For a pruned model a weight's zeros are those of ``weight * mask``; for
    any other model (e.g. after :func:`strip_pruning`) zeros are counted in
    the weights. Prunable weights are those of the weight table (Dense,
    EinsumDense, Conv kernels, embeddings); biases and norms are not counted.

    Args:
        model: A Keras model or layer.

    Returns:
        A :class:`SparsityReport` (print it for a table).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a")])
        >>> _ = model.layers[0].kernel.assign(keras.ops.zeros((8, 4)))
        >>> from keras_llmopt.sparsity import sparsity_report
        >>> sparsity_report(model).global_sparsity
        1.0
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "`model` must be a keras.Model or keras.layers.Layer. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    masked = {}
    for unit in pruning_units(model):
        for pw in unit.pruned:
            masked[id(pw.variable)] = (unit.weight_path(pw), pw)
    rows, seen = [], set()
    for unit_path, pw in masked.values():
        value = ops.convert_to_numpy(pw.variable) * ops.convert_to_numpy(pw.mask)
        rows.append(_row(unit_path, np.asarray(value), pw.input_axes, True))
        seen.add(id(pw.variable))
    for node in layer_tree.walk_layers(model):
        if not layer_tree.is_registered(node.layer):
            continue
        weights, _ = layer_tree.find_weights(node.layer)
        for w in weights:
            if id(w.variable) in seen:
                continue
            seen.add(id(w.variable))
            value = ops.convert_to_numpy(w.variable)
            rows.append(_row(f"{node.path}/{w.name}", value, w.input_axes, False))
    total = sum(r.size for r in rows)
    zeros = sum(r.size - r.nonzeros for r in rows)
    p_total = sum(r.size for r in rows if r.pruned)
    p_zeros = sum(r.size - r.nonzeros for r in rows if r.pruned)
    return SparsityReport(
        rows,
        zeros / total if total else 0.0,
        p_zeros / p_total if p_total else float("nan"),
        sum(r.dense_bytes for r in rows),
        sum(r.sparse_bytes for r in rows),
    )
