"""Weight quantization maths for one-shot methods (numpy): grids, RTN, GPTQ, AWQ, SmoothQuant.

A weight view ``w`` is ``(rows, cols)`` = (outputs, inputs). A grid is symmetric with
one scale per (row, group of ``group_size`` consecutive inputs) (``-1``: one group per
row). Scales are rounded to float16-representable values first, because LiteRT
stores blockwise scales in float16: the grid then survives the file exactly.
"""

import dataclasses

import numpy as np

from keras_llmopt._src.llm import solvers


@dataclasses.dataclass(frozen=True)
class Grid:
    """A weight on a symmetric integer grid.

    Attributes:
        codes: int8 ``(rows, cols)``.
        scales: float32 ``(rows, n_groups)``.
        bits: Code width.
        group_size: Inputs per scale (``-1``: one per row).

    Example:
        >>> import numpy as np
        >>> g = Grid(np.array([[1, -2]], np.int8), np.array([[0.5]], np.float32), 4, -1)
        >>> g.dequantize().tolist()
        [[0.5, -1.0]]
    """

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int

    def dequantize(self):
        """``codes * scale`` as float32 ``(rows, cols)``."""
        width = self.codes.shape[1] // self.scales.shape[1]
        return (self.codes.astype(np.float32) * np.repeat(self.scales, width, axis=1)).astype(
            np.float32
        )


def _check(w, bits, group_size):
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"`w` must be a (rows, cols) matrix. Received: shape {w.shape}")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"`bits` must be an integer in [2, 8]. Received: bits={bits!r}")
    cols = w.shape[1]
    if group_size != -1 and (
        not isinstance(group_size, int) or group_size < 1 or cols % group_size
    ):
        raise ValueError(
            f"`group_size` must be -1 or a divisor of the {cols} inputs. "
            f"Received: group_size={group_size!r}"
        )
    return w, (cols if group_size == -1 else group_size)


def _fp16_scale(max_abs, bits):
    scale = np.asarray(max_abs, np.float64) / (2 ** (bits - 1) - 1)
    scale = np.where(scale > 0, scale, 1.0)
    scale = np.float16(np.minimum(scale, 60000.0)).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(2**-14))


def grid_params(w, bits, group_size=-1):
    """Per (row, group) scales from ``max|w|``, float16-representable, float32 ``(rows, groups)``.

    Example:
        >>> import numpy as np
        >>> grid_params(np.array([[7.0, -3.5]]), 4).tolist()
        [[1.0]]
    """
    w, width = _check(w, bits, group_size)
    grouped = np.abs(w).reshape(w.shape[0], -1, width).max(axis=2)
    return _fp16_scale(grouped, bits)


def quantize_to_grid(w, scales, bits, group_size):
    """The :class:`Grid` of ``w`` on ``scales`` (round to nearest, clamped).

    Example:
        >>> import numpy as np
        >>> quantize_to_grid(np.array([[0.74, -9.0]]), np.array([[0.5]], "float32"), 4,
        ...                  -1).codes.tolist()
        [[1, -7]]
    """
    w, width = _check(w, bits, group_size)
    full = np.repeat(np.asarray(scales, np.float32), width, axis=1)
    high = 2 ** (bits - 1) - 1
    low = -high  # a narrow symmetric range, as LiteRT stores it
    codes = np.clip(np.round(w / full), low, high).astype(np.int8)
    return Grid(codes, np.asarray(scales, np.float32), bits, group_size)


def rtn_quantize(w, bits, group_size=-1):
    """Round to nearest on the max-magnitude grid (the naive baseline).

    Example:
        >>> import numpy as np
        >>> rtn_quantize(np.array([[7.0, 1.2]]), 4).codes.tolist()
        [[7, 1]]
    """
    return quantize_to_grid(w, grid_params(w, bits, group_size), bits, group_size)


def gptq_quantize(w, hessian, bits, group_size=-1, act_order=False, block_size=128, mask=None):
    """GPTQ (Frantar et al., 2023): columns rounded in turn, the error spread by OBS updates.

    ``U`` is the upper Cholesky factor of ``H⁻¹`` (``hessian`` damped by
    ``solvers.damped_hessian``); columns are processed in blocks with lazy batch
    updates. A group's scale is set from the current (updated) weights when the
    solver reaches the group's first column; with ``act_order`` columns go in
    decreasing ``diag(H)`` order and every group's scale is set up front from the
    original weights ("static groups"), so groups stay contiguous in the file.
    ``mask`` (True = kept) keeps pruned weights at exactly zero.

    Returns:
        ``(Grid, loss)``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(256, 8))
        >>> h = solvers.damped_hessian(x.T @ x, 256)
        >>> w = rng.normal(size=(4, 8)).astype("float32")
        >>> grid, _ = gptq_quantize(w, h, 4)
        >>> err = lambda v: float(np.einsum("ij,jk,ik->", v - w, h, v - w))
        >>> err(grid.dequantize()) <= err(rtn_quantize(w, 4).dequantize())
        True
    """
    weights, width = _check(w, bits, group_size)
    weights = weights.astype(np.float64).copy()
    rows, cols = weights.shape
    keep = np.ones_like(weights, bool) if mask is None else np.asarray(mask, bool)
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(cols)
    h = np.asarray(hessian, np.float64)[np.ix_(order, order)]
    u = solvers.hessian_inverse_cholesky(h)
    n_groups = cols // width
    scales = np.zeros((rows, n_groups), np.float32)
    if act_order:
        scales[:] = grid_params(weights, bits, group_size)
    weights, keep = weights[:, order], keep[:, order]
    high = 2 ** (bits - 1) - 1
    low = -high  # a narrow symmetric range, as LiteRT stores it
    codes = np.zeros((rows, cols), np.int8)
    loss = 0.0
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = weights[:, start:end].copy()
        errors = np.zeros_like(block)
        for i in range(end - start):
            column = order[start + i]
            group = column // width
            if not act_order and column % width == 0:
                ahead = np.concatenate([block[:, i:], weights[:, end:]], axis=1)
                group_weights = ahead[:, :width]
                scales[:, group] = _fp16_scale(np.abs(group_weights).max(axis=1), bits)
            scale = scales[:, group].astype(np.float64)
            code = np.clip(np.round(block[:, i] / scale), low, high)
            code = np.where(keep[:, start + i], code, 0.0)
            codes[:, column] = code.astype(np.int8)
            q = code * scale
            d = u[start + i, start + i]
            errors[:, i] = (block[:, i] - q) / d
            loss += 0.5 * float(np.sum(errors[:, i] ** 2))
            block[:, i:] -= np.outer(errors[:, i], u[start + i, start + i : end])
        weights[:, end:] -= errors @ u[start:end, end:]
    return Grid(codes, scales, bits, group_size), loss


def awq_scales(w, x_abs_mean, x, bits, group_size, grid_points=20):
    """AWQ's search: per-input scales ``s = mean|x|^alpha`` minimising the output error.

    ``w`` is one view or a list of views sharing the input (their rows are stacked);
    ``x`` a sample of input rows. The error of a candidate is
    ``|(Q(w * s) / s) xᵀ - w xᵀ|²``; per (row, group) a clipping ratio of the range
    is searched after.

    Returns:
        ``{"scales", "clip", "error_before", "error_after"}``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(64, 8)) * np.array([50, 1, 1, 1, 1, 1, 1, 1])
        >>> w = rng.normal(size=(4, 8))
        >>> r = awq_scales(w, np.abs(x).mean(0), x, 4, -1)
        >>> r["error_after"] <= r["error_before"]
        True
    """
    views = w if isinstance(w, list | tuple) else [w]
    stacked = np.concatenate([np.asarray(v, np.float32) for v in views], axis=0)
    _, width = _check(stacked, bits, group_size)
    x = np.asarray(x, np.float64)
    reference = stacked.astype(np.float64) @ x.T

    def error_of(scales, clip=None):
        grid = _clipped_grid(stacked * scales[None, :], clip, bits, group_size, width)
        return float(np.sum(((grid.dequantize() / scales[None, :]) @ x.T - reference) ** 2))

    ones = np.ones(stacked.shape[1], np.float32)
    before = error_of(ones)
    best, best_error = ones, before
    mean = np.maximum(np.asarray(x_abs_mean, np.float64), 1e-8)
    for alpha in np.linspace(0, 1, grid_points, endpoint=False)[1:]:
        s = mean**alpha
        s = np.clip(s / np.sqrt(s.max() * s.min()), 1e-4, 1e4).astype(np.float32)
        candidate = error_of(s)
        if candidate < best_error:
            best, best_error = s, candidate
    clip = _search_clip(stacked * best[None, :], best, x, bits, group_size, width)
    return {
        "scales": best,
        "clip": clip,
        "error_before": before,
        "error_after": min(error_of(best, clip), best_error),
    }


def _clipped_grid(w, clip, bits, group_size, width):
    grouped = np.abs(w).reshape(w.shape[0], -1, width).max(axis=2)
    if clip is not None:
        grouped = grouped * clip
    return quantize_to_grid(w, _fp16_scale(grouped, bits), bits, group_size)


def _search_clip(scaled, s, x, bits, group_size, width):
    rows = scaled.shape[0]
    n_groups = scaled.shape[1] // width
    best = np.ones((rows, n_groups), np.float32)
    best_error = np.full((rows, n_groups), np.inf)
    xs = x / s[None, :].astype(np.float64)
    for ratio in np.linspace(1.0, 0.5, 11):
        clip = np.full((rows, n_groups), ratio, np.float32)
        deq = _clipped_grid(scaled, clip, bits, group_size, width).dequantize()
        for g in range(n_groups):
            cols = slice(g * width, (g + 1) * width)
            out = (deq[:, cols] - scaled[:, cols]) @ xs[:, cols].T
            err = np.sum(out**2, axis=1)
            better = err < best_error[:, g]
            best[better, g] = ratio
            best_error[better, g] = err[better]
    return best


def awq_quantize(w, s, clip, bits, group_size):
    """The :class:`Grid` of ``w * s`` with AWQ's clipped ranges (``1 / s`` is folded before).

    Example:
        >>> import numpy as np
        >>> g = awq_quantize(np.array([[1.0, 2.0]]), np.ones(2), np.ones((1, 1)), 4, -1)
        >>> g.codes.tolist()
        [[4, 7]]
    """
    w, width = _check(w, bits, group_size)
    return _clipped_grid(w * np.asarray(s, np.float32)[None, :], clip, bits, group_size, width)


def smoothquant_scales(x_abs_max, w_abs_max, alpha=0.5):
    """SmoothQuant: ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, float32 ``(cols,)``.

    Zero or non-finite entries give 1; the result is clipped to [1e-5, 1e5].

    Example:
        >>> import numpy as np
        >>> smoothquant_scales(np.array([16.0, 0.0]), np.array([4.0, 1.0])).tolist()
        [2.0, 1.0]
    """
    x = np.asarray(x_abs_max, np.float64)
    w = np.asarray(w_abs_max, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = x**alpha / w ** (1.0 - alpha)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)
