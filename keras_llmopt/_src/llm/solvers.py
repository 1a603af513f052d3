"""Pruning solvers on a weight's 2-D view: magnitude, Wanda, SparseGPT and the Hessian helpers.

A weight arrives as its ``(rows, cols)`` view (output features by input features) and
calibration statistics describe the input features, the columns: ``xtx`` is the sum of
``x.T @ x`` over the calibration rows and ``x_sq_norm`` the per-column sum of squares.
Everything here is pure numpy. Masks are boolean with ``True`` for a kept weight.

Unstructured sparsity prunes exactly ``round(sparsity * cols)`` weights in every row.
N:M sparsity is written ``m_by_n=(m, n)``: every run of ``n`` consecutive input columns of
a row keeps exactly ``m`` weights, so ``(2, 4)`` is 50 %. Ties are broken by pruning the
lower column index first (stable sort).
"""

import numbers

import numpy as np


def _fmt(value):
    """``value`` as it appears after ``Received: name=`` in messages."""
    return repr(value) if isinstance(value, str) else str(value)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_view(w, name="w"):
    """``w`` as a float64 2-D array; a ValueError naming ``name`` otherwise."""
    view = np.asarray(w)
    if view.ndim != 2 or view.size == 0 or not np.issubdtype(view.dtype, np.number):
        raise ValueError(
            f"`{name}` must be a non-empty numeric 2-D (rows, cols) array. "
            f"Received: {name}.shape={view.shape}"
        )
    return view.astype(np.float64)


def _check_vector(x, cols, name):
    """``x`` as a float64 vector of length ``cols``; a ValueError naming ``name`` otherwise."""
    vector = np.asarray(x, dtype=np.float64)
    if vector.shape != (cols,):
        raise ValueError(
            f"`{name}` must have shape (cols,) = ({cols},), one entry per input column. "
            f"Received: {name}.shape={vector.shape}"
        )
    return vector


def _check_sparsity(sparsity):
    ok = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool)
    if not (ok and 0 <= sparsity < 1):
        raise ValueError(f"`sparsity` must be in [0, 1). Received: sparsity={_fmt(sparsity)}")
    return float(sparsity)


def _check_m_by_n(m_by_n, cols):
    """``(m, n)`` as ints after checking ``0 < m < n`` and that ``n`` divides ``cols``."""
    try:
        m, n = m_by_n
        ok = _is_int(m) and _is_int(n) and 0 < m < n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "`m_by_n` must be a pair of ints (m, n) with 0 < m < n: keep m weights in "
            f"every run of n input columns. Received: m_by_n={_fmt(m_by_n)}"
        )
    if cols % n:
        raise ValueError(
            f"`m_by_n`: the number of input columns cols={cols} is not divisible by n={n}. "
            f"Received: m_by_n={_fmt(m_by_n)}"
        )
    return int(m), int(n)


def _check_block_size(block_size):
    if not (_is_int(block_size) and block_size >= 1):
        raise ValueError(
            f"`block_size` must be an int >= 1. Received: block_size={_fmt(block_size)}"
        )
    return int(block_size)


def _check_hessian(hessian, cols):
    """``hessian`` as a finite float64 ``(cols, cols)`` array."""
    h = np.asarray(hessian, dtype=np.float64)
    if h.shape != (cols, cols) or not np.all(np.isfinite(h)):
        raise ValueError(
            f"`hessian` must be a finite (cols, cols) = ({cols}, {cols}) array. "
            f"Received: hessian.shape={h.shape}"
        )
    return h


def _pruned_count(sparsity, cols):
    return int(round(sparsity * cols))


def _keep_all_but_lowest(score, n_pruned):
    """Bool mask over the last axis of ``score`` pruning its ``n_pruned`` lowest entries."""
    order = np.argsort(score, axis=-1, kind="stable")
    keep = np.ones(score.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n_pruned], False, axis=-1)
    return keep


def _select(score, sparsity, m_by_n):
    """The keep mask of ``score`` (rows, cols): per row, or per run of ``n`` with N:M."""
    sparsity = _check_sparsity(sparsity)
    rows, cols = score.shape
    if m_by_n is None:
        return _keep_all_but_lowest(score, _pruned_count(sparsity, cols))
    m, n = _check_m_by_n(m_by_n, cols)
    runs = score.reshape(rows, cols // n, n)
    return _keep_all_but_lowest(runs, n - m).reshape(rows, cols)


def damped_hessian(xtx, count, dampening=0.01):
    """The damped layer Hessian ``H = 2 xtx / count + dampening * mean(diag) * I``.

    ``mean(diag)`` is the mean of the undamped diagonal ``diag(2 xtx / count)``. Columns
    whose diagonal is 0 (inputs that were always zero) get ``H[i, i] = 1`` and zero
    off-diagonal entries, so the matrix stays invertible; weights in those columns do not
    change the layer's output. The result is symmetrised.

    Args:
        xtx: Sum of ``x.T @ x`` over the calibration rows, shape ``(cols, cols)``.
        count: Number of calibration rows summed into ``xtx``, > 0.
        dampening: Relative diagonal dampening, >= 0.

    Returns:
        The float64 ``(cols, cols)`` Hessian.

    Raises:
        ValueError: On a non-square ``xtx``, ``count <= 0`` or a negative ``dampening``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.0, 0.0], [3.0, 0.0]])
        >>> damped_hessian(x.T @ x, count=2, dampening=0.1).tolist()
        [[10.5, 0.0], [0.0, 1.0]]
    """
    xtx = np.asarray(xtx, dtype=np.float64)
    if xtx.ndim != 2 or xtx.shape[0] != xtx.shape[1] or not np.all(np.isfinite(xtx)):
        raise ValueError(
            f"`xtx` must be a finite square (cols, cols) array. Received: xtx.shape={xtx.shape}"
        )
    if not (isinstance(count, numbers.Real) and not isinstance(count, bool) and count > 0):
        raise ValueError(
            f"`count` (calibration rows summed into xtx) must be > 0. Received: count={_fmt(count)}"
        )
    ok = isinstance(dampening, numbers.Real) and not isinstance(dampening, bool)
    if not (ok and np.isfinite(dampening) and dampening >= 0):
        raise ValueError(
            f"`dampening` must be a finite number >= 0. Received: dampening={_fmt(dampening)}"
        )
    h = 2.0 * xtx / float(count)
    h = 0.5 * (h + h.T)
    diag = np.diag(h).copy()
    h = h + float(dampening) * float(np.mean(diag)) * np.eye(len(h))
    dead = diag == 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    return h


def hessian_inverse_cholesky(hessian):
    """The upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``) used by GPTQ and SparseGPT.

    Row ``i`` of ``U`` carries the optimal update of the columns after ``i`` when column
    ``i`` is fixed, and ``U[i, i] ** 2`` is the inverse-Hessian diagonal of what remains.

    Args:
        hessian: Symmetric positive definite ``(cols, cols)`` array (see
            :func:`damped_hessian`).

    Returns:
        The float64 upper-triangular ``(cols, cols)`` factor.

    Raises:
        ValueError: If ``hessian`` is not square, finite and positive definite.

    Example:
        >>> import numpy as np
        >>> hessian_inverse_cholesky(np.diag([4.0, 0.25])).tolist()
        [[0.5, 0.0], [0.0, 2.0]]
    """
    h = np.asarray(hessian, dtype=np.float64)
    h = _check_hessian(h, h.shape[0] if h.ndim == 2 else -1)
    try:
        inv_lower = np.linalg.inv(np.linalg.cholesky(h))
        h_inv = inv_lower.T @ inv_lower
        return np.linalg.cholesky(0.5 * (h_inv + h_inv.T)).T
    except np.linalg.LinAlgError:
        raise ValueError(
            "`hessian` must be symmetric positive definite: build it with damped_hessian, or "
            f"raise its dampening. Received: hessian.shape={h.shape}"
        ) from None


def magnitude_prune(w, sparsity, m_by_n=None):
    """Prunes the smallest ``|w|`` of every row (or of every run of ``n`` columns with N:M).

    Args:
        w: The ``(rows, cols)`` weight view.
        sparsity: Fraction in ``[0, 1)`` pruned in each row; ignored (but checked) when
            ``m_by_n`` is given.
        m_by_n: ``None`` or ``(m, n)``: keep ``m`` weights in every run of ``n`` columns.

    Returns:
        ``(pruned_w, mask)``: float32 weights with pruned entries 0, and the bool mask
        (``True`` = kept), both of shape ``(rows, cols)``.

    Raises:
        ValueError: On a bad ``sparsity`` or ``m_by_n``.

    Example:
        >>> import numpy as np
        >>> pruned, mask = magnitude_prune(np.array([[1.0, -3.0, 2.0, 0.5]]), 0.5)
        >>> pruned.tolist(), mask.tolist()
        ([[0.0, -3.0, 2.0, 0.0]], [[False, True, True, False]])
    """
    view = _check_view(w)
    keep = _select(np.abs(view), sparsity, m_by_n)
    return np.where(keep, view, 0.0).astype(np.float32), keep


def wanda_prune(w, x_sq_norm, sparsity, m_by_n=None):
    """Wanda (Sun et al. 2024): prunes the lowest ``|w| * ||x_col||`` of every output row.

    The score of weight ``(r, c)`` is ``|w[r, c]| * sqrt(x_sq_norm[c])``, compared within
    each output row (or within every run of ``n`` columns with N:M).

    Args:
        w: The ``(rows, cols)`` weight view.
        x_sq_norm: Per-input-column sum of squares of the calibration inputs, ``(cols,)``.
        sparsity: Fraction in ``[0, 1)`` pruned in each row; ignored (but checked) when
            ``m_by_n`` is given.
        m_by_n: ``None`` or ``(m, n)``: keep ``m`` weights in every run of ``n`` columns.

    Returns:
        ``(pruned_w, mask)`` as in :func:`magnitude_prune`.

    Raises:
        ValueError: On a bad ``x_sq_norm``, ``sparsity`` or ``m_by_n``.

    Example:
        >>> import numpy as np
        >>> w = np.array([[1.0, 2.0], [1.0, 2.0]])
        >>> wanda_prune(w, np.array([100.0, 1.0]), 0.5)[1].tolist()
        [[True, False], [True, False]]
    """
    view = _check_view(w)
    norm = _check_vector(x_sq_norm, view.shape[1], "x_sq_norm")
    score = np.abs(view) * np.sqrt(np.maximum(norm, 0.0))[None, :]
    keep = _select(score, sparsity, m_by_n)
    return np.where(keep, view, 0.0).astype(np.float32), keep


def sparsegpt_prune(w, hessian, sparsity, m_by_n=None, block_size=128):
    """SparseGPT (Frantar & Alistarh 2023): prunes with optimal-brain-surgeon updates.

    With ``U`` the upper Cholesky factor of ``H⁻¹``, the columns are processed in blocks
    of ``block_size``. At each block's start the mask is chosen per row from the current
    weights with the score ``w² / diag(U_block)²``; the block prunes
    ``round(sparsity * end) - round(sparsity * start)`` weights per row, so every row
    loses exactly ``round(sparsity * cols)`` in total. With N:M the mask of a run of ``n``
    columns is chosen at the run's first column from the updated weights (the block size
    is then rounded down to a multiple of ``n``, at least ``n``). Each pruned column's
    error is spread onto the later columns of its block at once and onto the columns
    after the block in one lazy batch update.

    Args:
        w: The ``(rows, cols)`` weight view.
        hessian: The damped ``(cols, cols)`` Hessian from :func:`damped_hessian`.
        sparsity: Fraction in ``[0, 1)`` pruned in each row; ignored (but checked) when
            ``m_by_n`` is given.
        m_by_n: ``None`` or ``(m, n)``: keep ``m`` weights in every run of ``n`` columns.
        block_size: Columns per block, >= 1.

    Returns:
        ``(pruned_w, mask, loss)``: float32 weights (pruned entries exactly 0, kept ones
        updated), the bool mask (``True`` = kept) and the summed OBS loss
        ``sum((w - q)² / (2 U[i, i]²))``, which equals ``½ Σ_rows Δ H Δᵀ`` of the change.

    Raises:
        ValueError: On bad arguments or a Hessian that is not positive definite.

    Example:
        >>> import numpy as np
        >>> h = np.array([[2.0, 1.0], [1.0, 2.0]])
        >>> pruned, mask, loss = sparsegpt_prune(np.array([[1.0, 3.0]]), h, 0.5)
        >>> pruned.tolist(), round(loss, 4)
        ([[0.0, 3.5]], 0.75)
    """
    weights = _check_view(w)
    rows, cols = weights.shape
    sparsity = _check_sparsity(sparsity)
    block_size = _check_block_size(block_size)
    if m_by_n is not None:
        m, n = _check_m_by_n(m_by_n, cols)
        block_size = max(1, block_size // n) * n
    u = hessian_inverse_cholesky(_check_hessian(hessian, cols))
    keep = np.ones((rows, cols), dtype=bool)
    loss = 0.0
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = weights[:, start:end].copy()
        u_block = u[start:end, start:end]
        d = np.diag(u_block)
        if m_by_n is None:
            n_pruned = _pruned_count(sparsity, end) - _pruned_count(sparsity, start)
            keep[:, start:end] = _keep_all_but_lowest(block**2 / d**2, n_pruned)
        errors = np.zeros_like(block)
        for i in range(end - start):
            if m_by_n is not None and i % n == 0:
                score = block[:, i : i + n] ** 2 / d[i : i + n] ** 2
                keep[:, start + i : start + i + n] = _keep_all_but_lowest(score, n - m)
            column = block[:, i].copy()
            q = np.where(keep[:, start + i], column, 0.0)
            errors[:, i] = (column - q) / d[i]
            loss += 0.5 * float(np.sum(errors[:, i] ** 2))
            block[:, i:] -= np.outer(errors[:, i], u_block[i, i:])
            block[:, i] = q
        weights[:, start:end] = block
        weights[:, end:] -= errors @ u[start:end, end:]
    pruned = np.where(keep, weights, 0.0).astype(np.float32)
    return pruned, keep, loss
