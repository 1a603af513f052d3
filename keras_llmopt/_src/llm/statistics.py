"""Streaming statistics of a layer's inputs over calibration data (nothing else is kept).

One :class:`InputStatistics` per target layer adds each call's input rows as they
pass: ``XᵀX`` (the Hessian of the layer's reconstruction error, for SparseGPT and
GPTQ), per-column sums of squares (Wanda), mean and max magnitudes (AWQ,
SmoothQuant) and, for AWQ's error measure, an evenly spread sample of rows. The
activations themselves are dropped after each call.
"""

import numpy as np

KNOWN = ("hessian", "sq_norm", "abs_mean", "abs_max", "sample")


class InputStatistics:
    """What a layer's input rows add up to, for the statistics a method needs.

    Args:
        cols: Input features.
        needs: Names from ``KNOWN``.
        sample_rows: Rows kept for ``"sample"`` (spread over the calls).

    Example:
        >>> import numpy as np
        >>> stats = InputStatistics(2, ("hessian", "sq_norm"))
        >>> stats.update(np.array([[1.0, 2.0], [3.0, 0.0]]))
        >>> stats.count, stats.xtx.tolist(), stats.sq_norm.tolist()
        (2, [[10.0, 2.0], [2.0, 4.0]], [10.0, 4.0])
    """

    def __init__(self, cols, needs, sample_rows=512):
        unknown = sorted(set(needs) - set(KNOWN))
        if unknown:
            raise ValueError(f"Unknown statistics {unknown}; known: {list(KNOWN)}")
        self.cols = cols
        self.needs = tuple(needs)
        self.count = 0
        self.xtx = np.zeros((cols, cols), np.float64) if "hessian" in needs else None
        self.sq_norm = np.zeros(cols, np.float64)
        self.abs_sum = np.zeros(cols, np.float64)
        self.abs_max = np.zeros(cols, np.float64)
        self.sample_rows = sample_rows
        self._sample = []

    def update(self, rows):
        """Adds input rows ``(n, cols)``."""
        rows = np.asarray(rows, np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.cols:
            raise ValueError(
                f"Input rows must be (n, {self.cols}). Received: shape {tuple(rows.shape)}"
            )
        self.count += len(rows)
        if self.xtx is not None:
            self.xtx += rows.T @ rows
        self.sq_norm += np.einsum("ij,ij->j", rows, rows)
        magnitude = np.abs(rows)
        self.abs_sum += magnitude.sum(axis=0)
        if len(rows):
            np.maximum(self.abs_max, magnitude.max(axis=0), out=self.abs_max)
        if "sample" in self.needs:
            self._sample.append(rows[:: max(1, len(rows) // 64)].astype(np.float32))

    @property
    def abs_mean(self):
        """Mean ``|x|`` per input column."""
        return self.abs_sum / max(self.count, 1)

    @property
    def sample(self):
        """Up to ``sample_rows`` input rows spread over the calls, float32."""
        if not self._sample:
            return np.zeros((0, self.cols), np.float32)
        rows = np.concatenate(self._sample)
        step = max(1, len(rows) // self.sample_rows)
        return rows[::step][: self.sample_rows]

    @property
    def nbytes(self):
        """Bytes held (for the memory figures of the report)."""
        held = self.sq_norm.nbytes * 3 + sum(s.nbytes for s in self._sample)
        return held + (self.xtx.nbytes if self.xtx is not None else 0)
