"""What each one-shot config does to one step's layers, given their input statistics.

A handler is registered per config class (``register_method``), so a new method is a
config, its maths and one handler; the driver (``llm.oneshot``) names none of them.
A handler receives the step's layers and statistics, writes the new kernels and
returns one :class:`LayerResult` per layer (what it did, how far the layer's output
moved on the calibration data, and the naive baseline's figure beside it).
"""

import dataclasses
import time

import numpy as np

from keras_llmopt._src.llm import configs as configs_lib
from keras_llmopt._src.llm import folding, grid_solvers, grid_state, solvers

_HANDLERS = {}


@dataclasses.dataclass
class LayerResult:
    """One layer's outcome in a one-shot pass.

    Attributes:
        path: The layer's path.
        method: The config's description (``"sparsegpt 50%"``).
        sparsity: Fraction of zeros in the kernel after the step.
        bits: Code width for a grid method, else ``None``.
        error: Relative output error ``|(W' - W) X|² / |W X|²`` on the calibration data.
        baseline_error: The same for the naive method (magnitude pruning, or
            round-to-nearest) at the same settings.
        seconds: Time spent on the layer (solver and write-back).
        note: Anything the user should know (a skipped scale, a group size used).
    """

    path: str
    method: str
    sparsity: float
    bits: int | None
    error: float
    baseline_error: float | None
    seconds: float
    note: str = ""

    def to_dict(self):
        """Plain data (JSON)."""
        return dataclasses.asdict(self)


def register_method(config_class, handler):
    """Registers ``handler(config, step, stats, context) -> [LayerResult]`` for a config class.

    Example:
        >>> register_method(configs_lib.Magnitude, prune_step)
        >>> del _HANDLERS[configs_lib.Magnitude]  # the base class's handler serves it
    """
    _HANDLERS[config_class] = handler


def handler_for(config):
    """The handler registered for ``config``'s class (or a base class of it).

    Example:
        >>> handler_for(configs_lib.Wanda(0.5)).__name__
        'prune_step'
    """
    for cls in type(config).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    raise ValueError(
        f"No one-shot handler is registered for {type(config).__name__}; register one with "
        "keras_llmopt.llm.register_method(config_class, handler)."
    )


def relative_error(new, old, stats):
    """``|(new - old) X|² / |old X|²`` from the statistics (``XᵀX`` or its diagonal).

    Example:
        >>> import numpy as np
        >>> from keras_llmopt._src.llm.statistics import InputStatistics
        >>> s = InputStatistics(2, ("hessian",))
        >>> s.update(np.eye(2))
        >>> relative_error(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]), s)
        0.5
    """
    delta = np.asarray(new, np.float64) - np.asarray(old, np.float64)
    old = np.asarray(old, np.float64)
    if stats.xtx is not None:
        num = np.einsum("ij,jk,ik->", delta, stats.xtx, delta)
        den = np.einsum("ij,jk,ik->", old, stats.xtx, old)
    else:
        num = float((delta**2 * stats.sq_norm).sum())
        den = float((old**2 * stats.sq_norm).sum())
    return float(num / den) if den > 0 else 0.0


def _sparsity(view):
    return float(np.mean(view == 0.0))


def prune_step(config, step, stats, context):
    """Magnitude, Wanda and SparseGPT: zeros written into each layer's kernel."""
    results = []
    for target in step.targets:
        start = time.perf_counter()
        w = target.read_view()
        s = stats.get(target.path)
        baseline, _ = solvers.magnitude_prune(w, config.sparsity, config.m_by_n)
        if config.method == "magnitude":
            new = baseline
        elif config.method == "wanda":
            new, _ = solvers.wanda_prune(w, s.sq_norm, config.sparsity, config.m_by_n)
        else:
            hessian = solvers.damped_hessian(s.xtx, s.count, config.dampening)
            new, _, _ = solvers.sparsegpt_prune(
                w, hessian, config.sparsity, config.m_by_n, config.block_size
            )
        target.write_view(new)
        error = relative_error(new, w, s) if s is not None else float("nan")
        base = relative_error(baseline, w, s) if s is not None else None
        results.append(
            LayerResult(
                target.path,
                config.describe(),
                _sparsity(new),
                None,
                error,
                base,
                time.perf_counter() - start,
            )
        )
    return results


def effective_group_size(config, target):
    """The group size used on ``target`` (-1 when the config's groups span every input).

    Raises:
        ValueError: The group size does not divide the layer's inputs.

    Example:
        >>> import keras
        >>> from keras_llmopt._src.llm.linear_targets import as_linear_target
        >>> dense = keras.layers.Dense(2)
        >>> dense.build((None, 64))
        >>> effective_group_size(configs_lib.GPTQ(group_size=128), as_linear_target("d", dense))
        -1
    """
    size = config.group_size
    if size == -1 or size >= target.cols:
        return -1
    if target.cols % size:
        raise ValueError(
            f"{type(config).__name__}: `group_size` must divide the number of inputs of layer "
            f"{target.path!r} ({target.cols}). Received: group_size={size}; accepted: a "
            f"divisor of {target.cols}, or -1 (one scale per output)"
        )
    return size


def _group_note(config, size):
    if size == -1 and config.group_size != -1:
        return f"group_size {config.group_size} spans every input: one scale per output"
    return ""


def gptq_step(config, step, stats, context):
    """GPTQ: each layer's kernel rounded onto its grid with OBS updates; a grid state installed."""
    results = []
    for target in step.targets:
        start = time.perf_counter()
        w = target.read_view()
        size = effective_group_size(config, target)
        mask = (w != 0.0) if context.keep_zeros else None
        s = stats[target.path]
        hessian = solvers.damped_hessian(s.xtx, s.count, config.dampening)
        grid, _ = grid_solvers.gptq_quantize(
            w,
            hessian,
            config.bits,
            size,
            act_order=config.act_order,
            block_size=config.block_size,
            mask=mask,
        )
        new = grid.dequantize()
        baseline = grid_solvers.rtn_quantize(w, config.bits, size).dequantize()
        if mask is not None:
            baseline = baseline * mask
        target.write_view(new)
        grid_state.attach(target.layer, grid.scales, config.bits, size, target.perm, "gptq")
        results.append(
            LayerResult(
                target.path,
                config.describe(),
                _sparsity(new),
                config.bits,
                relative_error(new, w, s),
                relative_error(baseline, w, s),
                time.perf_counter() - start,
                _group_note(config, size),
            )
        )
    return results


def _folded(fold, step, scales, context):
    """Folds ``scales``; undoes it and returns False when the model's outputs moved."""
    before = context.probe_outputs()
    undo = fold.apply(step, scales)
    if context.same_outputs(before):
        return True
    undo()
    return False


def awq_step(config, step, stats, context):
    """AWQ: a scale searched for the step's shared input, folded into its norm, then int4."""
    start = time.perf_counter()
    views = [t.read_view() for t in step.targets]
    sizes = [effective_group_size(config, t) for t in step.targets]
    first = stats[step.targets[0].path]
    size = min(sizes, key=lambda g: g if g > 0 else 10**9)
    if len(set(sizes)) > 1:
        size = -1
    fold = folding.norm_fold(context.model, step) if step.norm_path else None
    note = "" if fold else "input from no normalization: scale search off, clipping only"
    search = grid_solvers.awq_scales(
        views if len(views) > 1 else views[0],
        first.abs_mean if fold else np.zeros(step.targets[0].cols),
        first.sample,
        config.bits,
        size,
        grid_points=config.grid_points if fold else 2,
    )
    scales = search["scales"]
    if fold and not _folded(fold, step, scales, context):
        note = "normalization output also read elsewhere: scale search off, clipping only"
        fold = None
        search = grid_solvers.awq_scales(
            views if len(views) > 1 else views[0],
            np.zeros(step.targets[0].cols),
            first.sample,
            config.bits,
            size,
            grid_points=2,
        )
        scales = search["scales"]
    results = []
    rows = 0
    for target, w in zip(step.targets, views):
        clip = search["clip"][rows : rows + target.rows]
        rows += target.rows
        grid = grid_solvers.awq_quantize(w, scales, clip, config.bits, size)
        target.write_view(grid.dequantize())
        grid_state.attach(target.layer, grid.scales, config.bits, size, target.perm, "awq")
        s = stats[target.path]
        new = grid.dequantize() / scales[None, :]
        baseline = grid_solvers.rtn_quantize(w, config.bits, size).dequantize()
        results.append(
            LayerResult(
                target.path,
                config.describe(),
                _sparsity(grid.dequantize()),
                config.bits,
                relative_error(new, w, s),
                relative_error(baseline, w, s),
                (time.perf_counter() - start) / len(step.targets),
                note or _group_note(config, size),
            )
        )
    return results


def smoothquant_step(config, step, stats, context):
    """SmoothQuant: ``s`` folded into the step's normalization and its layers' kernels."""
    start = time.perf_counter()
    views = [t.read_view() for t in step.targets]
    fold = folding.norm_fold(context.model, step) if step.norm_path else None
    note = ""
    if fold is None:
        note = "input from no normalization: not smoothed"
    if fold is not None:
        w_abs_max = np.max([np.abs(v).max(axis=0) for v in views], axis=0)
        scales = grid_solvers.smoothquant_scales(
            stats[step.targets[0].path].abs_max, w_abs_max, config.alpha
        )
        if not _folded(fold, step, scales, context):
            fold = None
            note = "normalization output also read elsewhere: not smoothed"
    results = []
    for target, w in zip(step.targets, views):
        results.append(
            LayerResult(
                target.path,
                config.describe() if fold else "smoothquant (skipped)",
                _sparsity(w),
                None,
                0.0,
                None,
                (time.perf_counter() - start) / len(step.targets),
                note,
            )
        )
    return results


register_method(configs_lib._SparseConfig, prune_step)
register_method(configs_lib.GPTQ, gptq_step)
register_method(configs_lib.AWQ, awq_step)
register_method(configs_lib.SmoothQuant, smoothquant_step)
