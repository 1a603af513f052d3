"""Histogram calibration: streaming histograms and the range choosers built on them.

Post-training quantization needs a ``[min, max]`` range per tensor. ``minmax``
takes the extremes, which one outlier can blow up; the histogram methods clip:

* ``percentile``: the value below which ``p`` percent of the magnitudes lie.
* ``mse``: the clip value minimising the expected quantization error over the
  histogram (clipping error plus rounding error).
* ``entropy``: TensorRT's calibrator: the clip value minimising the KL divergence
  between the clipped reference distribution and its quantized version.

This is offline maths in NumPy: activations are collected batch by batch, so the
histogram keeps a fixed number of bins and re-bins exactly (merging bin pairs,
doubling its range) whenever a batch exceeds the current range.
"""

import math

import numpy as np
from keras import ops

METHODS = ("minmax", "percentile", "mse", "entropy")


def _check_num_bits(num_bits):
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 2 <= num_bits <= 16:
        raise ValueError(
            f"`num_bits` must be an integer in [2, 16]. Received: num_bits={num_bits!r}"
        )


class Histogram:
    """A streaming histogram of ``x`` (``signed=True``) or of ``|x|``, with an adaptive range.

    Bins cover ``[0, limit]`` (magnitudes) or ``[-limit, limit]`` (signed). The
    first batch sets ``limit`` to its largest magnitude; a later batch beyond it
    doubles the range as often as needed, merging bin pairs, so counts are never
    interpolated. The exact observed ``min`` and ``max`` are kept too.

    Args:
        num_bins: Number of bins, a multiple of 4 (2048 by default, as TensorRT).
        signed: Histogram ``x`` rather than ``|x|`` (needed for asymmetric ranges).

    Example:
        >>> import numpy as np
        >>> h = Histogram(num_bins=8)
        >>> h.update(np.array([0.1, -0.9, 0.5]))
        >>> h.limit, h.counts.tolist()
        (0.9, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
        >>> h.update(np.array([3.0]))  # 3.0 > 0.9: range doubled twice, to 3.6
        >>> h.limit, h.counts.tolist()
        (3.6, [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    """

    def __init__(self, num_bins=2048, signed=False):
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 8:
            raise ValueError(f"`num_bins` must be an integer >= 8. Received: num_bins={num_bins!r}")
        if num_bins % 4:
            raise ValueError(
                f"`num_bins` must be a multiple of 4 (exact re-binning). "
                f"Received: num_bins={num_bins!r}"
            )
        if not isinstance(signed, bool):
            raise ValueError(f"`signed` must be a bool. Received: signed={signed!r}")
        self.num_bins = num_bins
        self.signed = signed
        self.counts = np.zeros(num_bins, np.float64)
        self.limit = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def total(self):
        """Number of values seen."""
        return float(self.counts.sum())

    @property
    def edges(self):
        """The ``num_bins + 1`` bin edges."""
        low = -self.limit if self.signed else 0.0
        return np.linspace(low, self.limit, self.num_bins + 1)

    def _zero_bin(self):
        return self.num_bins // 2 if self.signed else 0

    def _grow(self, new_abs_max):
        doublings = math.ceil(math.log2(new_abs_max / self.limit))
        while self.limit < new_abs_max:  # float safety: ceil(log2) can fall one short
            for _ in range(min(doublings, int(math.log2(self.num_bins)) + 1)):
                merged = self.counts.reshape(-1, 2).sum(axis=1)
                grown = np.zeros_like(self.counts)
                if self.signed:
                    quarter = self.num_bins // 4
                    grown[quarter : quarter + merged.size] = merged
                else:
                    grown[: merged.size] = merged
                self.counts = grown
            self.limit *= 2.0**doublings
            doublings = 1

    def update(self, x):
        """Adds the values of ``x`` (array or tensor of any shape).

        Raises:
            ValueError: ``x`` holds NaN or infinite values.
        """
        values = np.asarray(ops.convert_to_numpy(x) if not isinstance(x, np.ndarray) else x)
        values = values.astype(np.float64, copy=False).ravel()
        if values.size == 0:
            return
        if not np.all(np.isfinite(values)):
            bad = int(values.size - np.isfinite(values).sum())
            raise ValueError(
                f"Cannot calibrate on non-finite values: the batch holds {bad} NaN/inf "
                f"entries out of {values.size}."
            )
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        if not self.signed:
            values = np.abs(values)
        abs_max = float(np.abs(values).max())
        if abs_max > self.limit:
            if self.limit == 0.0:  # only zeros so far: they sit in the zero bin
                self.limit = abs_max
            else:
                self._grow(abs_max)
        if self.limit == 0.0:
            self.counts[self._zero_bin()] += values.size
            return
        low = -self.limit if self.signed else 0.0
        index = np.floor((values - low) / (self.limit - low) * self.num_bins).astype(np.int64)
        index = np.clip(index, 0, self.num_bins - 1)
        self.counts += np.bincount(index, minlength=self.num_bins)

    def magnitude_counts(self):
        """Counts of ``|x|`` over ``[0, limit]``: ``(counts, bin_width)``.

        A signed histogram is folded around 0 (exactly: its bins are symmetric),
        giving ``num_bins // 2`` magnitude bins.
        """
        if not self.signed:
            return self.counts, self.limit / self.num_bins
        half = self.num_bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.limit / half


def collect_histogram(batches, num_bins=2048, signed=False, histogram=None):
    """Builds (or extends) a :class:`Histogram` from batches of values.

    Args:
        batches: An array/tensor, or an iterable of them (e.g. activations batch
            by batch).
        num_bins: Number of bins for a new histogram.
        signed: Histogram ``x`` (for asymmetric ranges) instead of ``|x|``.
        histogram: An existing :class:`Histogram` to extend instead.

    Returns:
        The histogram.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> h = collect_histogram(rng.normal(size=(10, 1000)))  # 10 batches
        >>> int(h.total)
        10000
    """
    if histogram is None:
        histogram = Histogram(num_bins=num_bins, signed=signed)
    elif not isinstance(histogram, Histogram):
        raise TypeError(
            f"`histogram` must be a Histogram or None. Received: histogram={histogram!r}"
        )
    if isinstance(batches, np.ndarray) and batches.ndim == 0:
        batches = [batches]
    elif hasattr(batches, "shape") and not isinstance(batches, np.ndarray):
        batches = [batches]  # a tensor is one batch
    elif isinstance(batches, np.ndarray):
        batches = list(batches) if batches.ndim > 1 else [batches]
    for batch in batches:
        histogram.update(batch)
    return histogram


def _percentile_bound(counts, width, p):
    cdf = np.cumsum(counts) / counts.sum()
    index = int(np.searchsorted(cdf, p / 100.0 - 1e-12))
    return (min(index, counts.size - 1) + 1) * width


def _entropy_bound(counts, width, num_quant_bins):
    """TensorRT's KL-divergence threshold over magnitude counts."""
    n = counts.size
    if counts.sum() == 0:
        return 0.0
    last_nonzero = int(np.nonzero(counts)[0][-1]) + 1
    if last_nonzero <= num_quant_bins:
        return last_nonzero * width  # nothing to clip: every value has its own level
    best_i, best_kl = n, math.inf
    for i in range(num_quant_bins, n + 1):
        sliced = counts[:i]
        reference = sliced.copy()
        reference[-1] += counts[i:].sum()  # clipped values pile onto the last bin
        merged = i // num_quant_bins
        starts = np.arange(num_quant_bins) * merged
        sizes = np.diff(np.append(starts, i))
        nonzero = sliced > 0
        group_sum = np.add.reduceat(sliced, starts)
        group_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.divide(
            group_sum, group_nonzero, out=np.zeros_like(group_sum), where=group_nonzero > 0
        )
        candidate = np.repeat(per_bin, sizes) * nonzero
        p = reference / reference.sum()
        q_total = candidate.sum()
        q = candidate / q_total if q_total > 0 else candidate
        support = p > 0
        q_safe = np.where(q[support] > 0, q[support], 1e-12)  # smoothed, as TensorRT does
        kl = float(np.sum(p[support] * np.log(p[support] / q_safe)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def _mse_symmetric(counts, width, qmax):
    centers = (np.arange(counts.size) + 0.5) * width
    total = counts.sum()
    best_t, best_err = counts.size * width, math.inf
    candidates = (np.arange(1, counts.size + 1) * width)[:, None]
    for chunk in np.array_split(candidates, max(1, counts.size // 256)):
        err = _expected_error(centers, width, counts, -chunk, chunk, chunk / qmax, total)
        i = int(np.argmin(err))
        if err[i] < best_err:
            best_err, best_t = float(err[i]), float(chunk[i, 0])
    return best_t


def _expected_error(centers, width, counts, low, high, scale, total):
    """Mean squared quantization error of the histogram for ranges ``[low, high]``.

    Values beyond the range cost their clipping distance; values inside cost the
    rounding error of their bin's centre, or ``scale**2 / 12`` (uniform rounding)
    when a bin spans several levels, plus the spread inside the bin.
    """
    clipped = np.clip(centers[None, :], low, high)
    clip_err = (centers[None, :] - clipped) ** 2
    rounded = low + np.round((clipped - low) / scale) * scale
    center_err = (clipped - rounded) ** 2 + width**2 / 12.0
    round_err = np.where(width >= scale, scale**2 / 12.0, center_err)
    inside = (centers[None, :] >= low) & (centers[None, :] <= high)
    err = clip_err + np.where(inside, round_err, 0.0)
    return (err * counts[None, :]).sum(axis=1) / total


def _mse_asymmetric(hist, num_bits, max_candidates=96):
    width = 2.0 * hist.limit / hist.num_bins
    centers = hist.edges[:-1] + width / 2.0
    counts = hist.counts
    total = counts.sum()
    half = hist.num_bins // 2
    step = max(1, half // max_candidates)
    # Candidate bounds at bin edges, always including 0 and the observed extremes.
    his = np.unique(np.append(np.arange(half, 0, -step) * width, max(hist.max, 0.0)))
    los = np.unique(np.append(-np.arange(half, 0, -step) * width, min(hist.min, 0.0)))
    levels = 2**num_bits - 1
    lo_grid, hi_grid = np.meshgrid(los, his, indexing="ij")
    lo_flat, hi_flat = lo_grid.ravel()[:, None], hi_grid.ravel()[:, None]
    best, best_err = (float(los[0]), float(his[-1])), math.inf
    for idx in np.array_split(np.arange(lo_flat.shape[0]), max(1, lo_flat.shape[0] // 128)):
        low, high = lo_flat[idx], hi_flat[idx]
        scale = np.maximum((high - low) / levels, 1e-30)
        err = _expected_error(centers, width, counts, low, high, scale, total)
        i = int(np.argmin(err))
        if err[i] < best_err:
            best_err, best = float(err[i]), (float(low[i, 0]), float(high[i, 0]))
    return best


def choose_range(histogram, method="entropy", num_bits=8, symmetric=True, percentile=99.99):
    """Picks a quantization range ``(min, max)`` from a calibration histogram.

    Args:
        histogram: A :class:`Histogram` (from :func:`collect_histogram`).
        method: One of ``"minmax"``, ``"percentile"``, ``"mse"``, ``"entropy"``.
        num_bits: Bit width the range is for (2 to 16).
        symmetric: Return ``(-t, t)``; otherwise an affine range including 0,
            which needs a ``signed=True`` histogram.
        percentile: For ``"percentile"``: percent of values kept inside, in (0, 100].

    Returns:
        ``(min, max)`` as Python floats.

    Raises:
        ValueError: Unknown method, bad arguments, an empty histogram, or an
            asymmetric range asked of a magnitude histogram.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.append(rng.normal(size=100_000), 500.0)  # one huge outlier
        >>> h = collect_histogram(x)
        >>> choose_range(h, "minmax")
        (-500.0, 500.0)
        >>> lo, hi = choose_range(h, "percentile", percentile=99.9)
        >>> 3.0 < hi < 4.0
        True
    """
    if method not in METHODS:
        raise ValueError(
            f"Unknown calibration method. Accepted: {', '.join(METHODS)}. "
            f"Received: method={method!r}"
        )
    if not isinstance(histogram, Histogram):
        raise TypeError(
            "`histogram` must be a Histogram (see collect_histogram). "
            f"Received: histogram={type(histogram).__name__}"
        )
    _check_num_bits(num_bits)
    if not isinstance(symmetric, bool):
        raise ValueError(f"`symmetric` must be a bool. Received: symmetric={symmetric!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, int | float):
        raise ValueError(
            f"`percentile` must be a number in (0, 100]. Received: percentile={percentile!r}"
        )
    if not 0.0 < percentile <= 100.0:
        raise ValueError(
            f"`percentile` must be a number in (0, 100]. Received: percentile={percentile!r}"
        )
    if histogram.total == 0:
        raise ValueError("The histogram is empty: collect some data before choosing a range.")
    if not symmetric and not histogram.signed:
        raise ValueError(
            "An asymmetric range (symmetric=False) needs a histogram of signed values: "
            "collect it with signed=True. Received: a magnitude histogram (signed=False)."
        )
    abs_max = max(abs(histogram.min), abs(histogram.max))
    if abs_max == 0.0:
        return (0.0, 0.0)
    if symmetric:
        counts, width = histogram.magnitude_counts()
        if method == "minmax":
            bound = abs_max
        elif method == "percentile":
            bound = _percentile_bound(counts, width, percentile)
        elif method == "mse":
            bound = _mse_symmetric(counts, width, 2 ** (num_bits - 1) - 1)
        else:
            bound = _entropy_bound(counts, width, 2 ** (num_bits - 1))
        bound = min(bound, abs_max)
        return (-bound, bound)

    lo_seen, hi_seen = min(histogram.min, 0.0), max(histogram.max, 0.0)
    half = histogram.num_bins // 2
    width = histogram.limit / half
    positive, negative = histogram.counts[half:], histogram.counts[:half][::-1]
    if method == "minmax":
        return (lo_seen, hi_seen)
    if method == "mse":
        lo, hi = _mse_asymmetric(histogram, num_bits)
    elif method == "percentile":
        cdf = np.cumsum(histogram.counts) / histogram.total
        tail = (100.0 - percentile) / 100.0
        lo = histogram.edges[int(np.searchsorted(cdf, tail - 1e-12))] if tail > 0 else lo_seen
        upper = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
        hi = histogram.edges[min(upper, histogram.num_bins - 1) + 1]
    else:  # entropy, each side with half the levels
        levels = 2 ** (num_bits - 1)
        hi = _entropy_bound(positive, width, levels) if positive.sum() else 0.0
        lo = -_entropy_bound(negative, width, levels) if negative.sum() else 0.0
    return (max(min(float(lo), 0.0), lo_seen), min(max(float(hi), 0.0), hi_seen))
