"""One-dimensional k-means for weight clustering (a codebook, or "quantization table").

A clustered weight stores ``k`` centroids and, per element, the index of its
centroid; reconstruction is ``centroids[indices]``. Fitting is offline NumPy
(Lloyd iterations on the weight's distinct values, weighted by their counts, so
a 1-D assignment is a binary search). :func:`assign_to_centroids` is the
``keras.ops`` version used inside a train step, where centroids are trainable.

Guarantees: centroids are sorted and, when the weight has at least ``k``
distinct values, every cluster is non-empty and the reconstruction has exactly
``k`` distinct values. With ``preserve_sparsity=True``, 0.0 is an exact
centroid and every zero weight stays zero.
"""

import numpy as np
from keras import ops


class CentroidInitialization:
    """How k-means centroids are initialised (tfmot's names).

    * ``LINEAR``: evenly spaced between the weight's min and max.
    * ``RANDOM``: uniform random between min and max.
    * ``DENSITY_BASED``: evenly spaced quantiles (dense regions get more centroids).
    * ``KMEANS_PLUS_PLUS``: k-means++ seeding (distance-squared sampling).

    Example:
        >>> CentroidInitialization.LINEAR
        'LINEAR'
        >>> CentroidInitialization.values()
        ('LINEAR', 'RANDOM', 'DENSITY_BASED', 'KMEANS_PLUS_PLUS')
    """

    LINEAR = "LINEAR"
    RANDOM = "RANDOM"
    DENSITY_BASED = "DENSITY_BASED"
    KMEANS_PLUS_PLUS = "KMEANS_PLUS_PLUS"

    @classmethod
    def values(cls):
        """All accepted names."""
        return (cls.LINEAR, cls.RANDOM, cls.DENSITY_BASED, cls.KMEANS_PLUS_PLUS)


def _as_numpy(w, name="w"):
    if isinstance(w, np.ndarray):
        values = w
    else:
        try:
            values = np.asarray(ops.convert_to_numpy(w))
        except Exception as err:  # noqa: BLE001 - reworded below with the argument name
            raise TypeError(
                f"`{name}` must be an array or tensor of numbers. Received: {name}={w!r}"
            ) from err
    if values.dtype.kind not in "fiu":
        raise TypeError(
            f"`{name}` must hold real numbers. Received: {name} with dtype {values.dtype}"
        )
    values = values.astype(np.float64).ravel()
    if values.size and not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` holds NaN or infinite values; cannot cluster it.")
    return values


def _check_k(k, size, name="number_of_clusters"):
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"`{name}` must be an integer >= 2. Received: {name}={k!r}")
    if k < 2:
        raise ValueError(f"`{name}` must be an integer >= 2. Received: {name}={k!r}")
    if k > size:
        raise ValueError(
            f"`{name}` must not exceed the number of weights ({size}). Received: {name}={k!r}"
        )
    return int(k)


def _check_method(method):
    if isinstance(method, str) and method.upper() in CentroidInitialization.values():
        return method.upper()
    raise ValueError(
        "Unknown centroid initialisation. Accepted: "
        f"{', '.join(CentroidInitialization.values())}. Received: method={method!r}"
    )


def _init_from_values(values, counts, k, method, rng):
    lo, hi = float(values[0]), float(values[-1])
    if method == CentroidInitialization.LINEAR:
        return np.linspace(lo, hi, k)
    if method == CentroidInitialization.RANDOM:
        return np.sort(rng.uniform(lo, hi, size=k))
    if method == CentroidInitialization.DENSITY_BASED:
        cdf = np.cumsum(counts) / counts.sum()
        targets = (np.arange(k) + 0.5) / k
        return values[np.minimum(np.searchsorted(cdf, targets), values.size - 1)]
    # k-means++: each new centroid drawn with probability ~ count * distance^2.
    probs = counts / counts.sum()
    centroids = [values[rng.choice(values.size, p=probs)]]
    dist2 = (values - centroids[0]) ** 2
    for _ in range(1, k):
        weights = counts * dist2
        total = weights.sum()
        if total <= 0:
            pick = rng.choice(values.size, p=probs)
        else:
            pick = rng.choice(values.size, p=weights / total)
        centroids.append(values[pick])
        dist2 = np.minimum(dist2, (values - values[pick]) ** 2)
    return np.sort(np.asarray(centroids))


def init_centroids(w, k, method=CentroidInitialization.LINEAR, seed=0):
    """Initial centroids for clustering ``w`` into ``k`` clusters.

    Args:
        w: The weight (array or tensor, any shape).
        k: Number of clusters, 2 to ``w.size``.
        method: A :class:`CentroidInitialization` name.
        seed: Seed for ``RANDOM`` and ``KMEANS_PLUS_PLUS``.

    Returns:
        A sorted float64 NumPy array of ``k`` centroids.

    Raises:
        ValueError: Bad ``k`` or unknown ``method``.

    Example:
        >>> init_centroids([0.0, 1.0, 2.0, 3.0, 4.0], 3).tolist()
        [0.0, 2.0, 4.0]
    """
    values = _as_numpy(w)
    k = _check_k(k, values.size)
    method = _check_method(method)
    unique, counts = np.unique(values, return_counts=True)
    rng = np.random.default_rng(seed)
    return np.sort(_init_from_values(unique, counts.astype(np.float64), k, method, rng))


def _assign(values, centroids):
    """Nearest sorted centroid for each value (ties go to the lower one)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def _means(values, counts, labels, k, previous):
    mass = np.bincount(labels, weights=counts, minlength=k)
    sums = np.bincount(labels, weights=counts * values, minlength=k)
    return np.where(mass > 0, sums / np.maximum(mass, 1e-300), previous), mass


def _fill_empty(values, counts, labels, k):
    """Relabels contiguous runs so all ``k`` clusters are non-empty (needs >= k values).

    In 1-D, clusters are contiguous runs of the sorted distinct values. Each empty
    cluster is replaced by splitting the run with the largest squared error at its
    widest gap; cluster ids are then renumbered in value order.
    """
    runs = [np.flatnonzero(labels == c) for c in range(k)]
    runs = [r for r in runs if r.size]
    while len(runs) < k:
        best, best_sse = None, -1.0
        for i, r in enumerate(runs):
            if r.size < 2:
                continue
            v, c = values[r], counts[r]
            sse = float((c * (v - np.average(v, weights=c)) ** 2).sum())
            if sse > best_sse:
                best, best_sse = i, sse
        r = runs.pop(best)
        cut = int(np.argmax(np.diff(values[r]))) + 1
        runs[best:best] = [r[:cut], r[cut:]]
    new = np.empty_like(labels)
    for c, r in enumerate(runs):
        new[r] = c
    return new


def kmeans_1d(
    w,
    k,
    init=CentroidInitialization.KMEANS_PLUS_PLUS,
    iters=100,
    seed=0,
    preserve_sparsity=False,
):
    """Clusters the values of ``w`` into ``k`` centroids (1-D k-means, Lloyd's algorithm).

    Args:
        w: The weight (array or tensor, any shape).
        k: Number of clusters, 2 to ``w.size`` (includes the zero centroid when
            ``preserve_sparsity``).
        init: A :class:`CentroidInitialization` name.
        iters: Maximum Lloyd iterations (stops early once assignments settle).
        seed: Seed for random initialisations.
        preserve_sparsity: Keep 0.0 as an exact centroid and every zero weight at it;
            the other ``k - 1`` centroids cluster the non-zero weights, which never
            map to 0 (the number of zeros is unchanged).

    Returns:
        ``(centroids, indices)``: sorted float32 centroids of shape ``(k,)`` and
        int32 indices of ``w``'s shape, so ``centroids[indices]`` is the clustered
        weight. With fewer than ``k`` distinct values the result is exact and
        some centroids repeat.

    Raises:
        ValueError: ``k < 2``, ``k > w.size``, bad ``iters`` or unknown ``init``.

    Example:
        >>> import numpy as np
        >>> w = np.array([[0.1, 0.12, 0.9], [1.0, 0.11, 0.95]])
        >>> centroids, indices = kmeans_1d(w, 2)
        >>> [round(float(c), 2) for c in centroids], indices.tolist()
        ([0.11, 0.95], [[0, 0, 1], [1, 0, 1]])
    """
    shape = np.shape(w) if isinstance(w, np.ndarray | list | tuple) else tuple(w.shape)
    values = _as_numpy(w)
    k = _check_k(k, values.size)
    init = _check_method(init)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"`iters` must be an integer >= 1. Received: iters={iters!r}")
    if not isinstance(preserve_sparsity, bool):
        raise ValueError(
            f"`preserve_sparsity` must be a bool. Received: preserve_sparsity={preserve_sparsity!r}"
        )
    rng = np.random.default_rng(seed)
    if preserve_sparsity:
        nonzero = values != 0.0
        if not np.any(nonzero):
            return np.zeros(k, np.float32), np.zeros(shape, np.int32)
        nonzero_centroids = _fit(values[nonzero], k - 1, init, iters, rng)
        if np.any(nonzero_centroids == 0.0):  # a cluster straddling 0 averaged to 0.0
            nearest = values[nonzero][np.argmin(np.abs(values[nonzero]))]
            nonzero_centroids[nonzero_centroids == 0.0] = nearest
            nonzero_centroids = np.sort(nonzero_centroids)
        zero_index = int(np.searchsorted(nonzero_centroids, 0.0))
        centroids = np.insert(nonzero_centroids, zero_index, 0.0)
        # Non-zero weights choose among the non-zero centroids only, so sparsity is
        # exactly what it was; zeros map to the zero centroid.
        indices = np.full(values.shape, zero_index, np.int64)
        nz_index = _assign(values[nonzero], nonzero_centroids)
        indices[nonzero] = nz_index + (nz_index >= zero_index)
    else:
        centroids = _fit(values, k, init, iters, rng)
        indices = _assign(values, centroids)
    return centroids.astype(np.float32), indices.reshape(shape).astype(np.int32)


def _fit(values, k, init, iters, rng):
    """Sorted centroids of ``values``; all clusters non-empty when possible."""
    unique, counts = np.unique(values, return_counts=True)
    counts = counts.astype(np.float64)
    if unique.size <= k:
        # Lossless: every distinct value is a centroid; pad by repeating the largest.
        return np.concatenate([unique, np.full(k - unique.size, unique[-1])])
    centroids = np.sort(_init_from_values(unique, counts, k, init, rng))
    labels = _assign(unique, centroids)
    for _ in range(iters):
        centroids, _ = _means(unique, counts, labels, k, centroids)
        centroids = np.sort(centroids)
        new_labels = _assign(unique, centroids)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    if np.unique(labels).size < k:
        labels = _fill_empty(unique, counts, labels, k)
    # Means of contiguous non-empty runs: strictly increasing, hence k distinct values.
    centroids, _ = _means(unique, counts, labels, k, centroids)
    return centroids


def assign_to_centroids(w, centroids):
    """Index of the nearest centroid for each element (``keras.ops``; TF and JAX).

    Args:
        w: Tensor of any shape.
        centroids: 1-D tensor of sorted centroids.

    Returns:
        int32 indices of ``w``'s shape.

    Example:
        >>> idx = assign_to_centroids([[0.2, 0.9], [-1.0, 0.5]], [-1.0, 0.0, 1.0])
        >>> ops.convert_to_numpy(idx).tolist()
        [[1, 2], [0, 1]]
    """
    w = ops.convert_to_tensor(w, "float32")
    centroids = ops.convert_to_tensor(centroids, "float32")
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    flat = ops.reshape(w, (-1,))
    indices = ops.searchsorted(midpoints, flat, side="left")
    return ops.reshape(ops.cast(indices, "int32"), ops.shape(w))
