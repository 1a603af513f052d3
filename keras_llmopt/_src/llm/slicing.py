"""Copies weights into a rebuilt, smaller layer by keeping chosen indices along shrunk axes.

A rebuilt layer's weights come in the same order as the original's; an axis whose
size changed is matched to the pruned dimension of that size (``{old size: kept
indices}``), or to a dimension that size is a whole multiple of (flattened heads:
``heads * head_dim``). A weight no dimension explains is an error naming it.
"""

import numpy as np


def _indices_for(old, new, kept_by_size, where):
    kept = kept_by_size.get(old)
    if kept is not None and len(kept) == new:
        return np.asarray(kept)
    matches = []
    for size, indices in kept_by_size.items():
        if size and old % size == 0 and old != size and len(indices) * (old // size) == new:
            block = old // size
            matches.append((np.asarray(indices)[:, None] * block + np.arange(block)).ravel())
    if len(matches) == 1:
        return matches[0]
    raise ValueError(
        f"{where}: no pruned dimension explains a change of size {old} -> {new} "
        f"(pruned sizes: {sorted(kept_by_size)}). Received: a weight whose shrunk axis "
        "matches none, or more than one"
    )


def sliced(value, new_shape, kept_by_size, where="weight"):
    """``value`` cut to ``new_shape``, keeping ``kept_by_size[old size]`` along each shrunk axis.

    Example:
        >>> value = np.arange(12).reshape(3, 4)
        >>> sliced(value, (3, 2), {4: [1, 3]}).tolist()
        [[1, 3], [5, 7], [9, 11]]
        >>> sliced(np.arange(6), (4,), {3: [0, 2]}).tolist()  # 3 heads x 2 channels
        [0, 1, 4, 5]
    """
    value = np.asarray(value)
    new_shape = tuple(int(n) for n in new_shape)
    if len(new_shape) != value.ndim:
        raise ValueError(
            f"{where}: rebuilt weight has rank {len(new_shape)}, original {value.ndim}. "
            f"Received: shapes {value.shape} -> {new_shape}"
        )
    for axis, (old, new) in enumerate(zip(value.shape, new_shape)):
        if old == new:
            continue
        if new > old:
            raise ValueError(
                f"{where}: rebuilt weight is larger along axis {axis} ({old} -> {new})."
            )
        value = np.take(value, _indices_for(old, new, kept_by_size, where), axis=axis)
    return value


def kept_by_size(*dims):
    """``{old size: kept indices}`` from ``(old size, kept)`` pairs; conflicting sizes dropped.

    Two pruned dimensions of the same size that keep different indices cannot be told
    apart by size; that size is left out, so a weight needing it is an error.

    Example:
        >>> kept_by_size((4, [0, 1]), (8, [2]), (4, [0, 1]))
        {4: [0, 1], 8: [2]}
    """
    found, clashing = {}, set()
    for size, kept in dims:
        kept = [int(i) for i in kept]
        if size in found and found[size] != kept:
            clashing.add(size)
        found.setdefault(size, kept)
    return {size: kept for size, kept in found.items() if size not in clashing}


def copy_weights(old_layer, new_layer, kept, where=None):
    """Assigns ``old_layer``'s weights to ``new_layer``, sliced by ``kept`` ({size: indices}).

    Example:
        >>> import keras
        >>> old, new = keras.layers.Dense(4), keras.layers.Dense(2)
        >>> old.build((None, 3)); new.build((None, 3))
        >>> copy_weights(old, new, {4: [0, 3]})
        >>> bool(np.allclose(new.kernel.numpy(), old.kernel.numpy()[:, [0, 3]]))
        True
    """
    where = where or old_layer.name
    old_weights, new_weights = old_layer.weights, new_layer.weights
    if len(old_weights) != len(new_weights):
        raise ValueError(
            f"Layer {where!r}: the rebuilt layer has {len(new_weights)} weights, the "
            f"original {len(old_weights)}; cannot copy them."
        )
    for old, new in zip(old_weights, new_weights):
        value = sliced(old.numpy(), new.shape, kept, f"Layer {where!r} weight {old.path!r}")
        new.assign(value.astype(new.dtype))
