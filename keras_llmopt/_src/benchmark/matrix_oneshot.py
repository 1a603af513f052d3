"""The model matrix's one-shot columns: ``llm.oneshot`` from 16 calibration rows, exported.

Each cell compresses the row's (warmed-up) model once with one method and ships a
verified ``.tflite``, checking that the result is what the method claims:

* ``oneshot_wanda``: Wanda 50 %; every compressed layer has exactly half of each output
  row zero; fp32 file;
* ``oneshot_sparsegpt_2of4``: SparseGPT 2:4; every run of 4 inputs of every compressed
  layer holds 2 zeros, in the model and in the fp32 file's FULLY_CONNECTED weights;
* ``oneshot_gptq_int4`` / ``oneshot_awq_int4``: a 4-bit grid per compressed layer, an
  int4 file that stores exactly those codes and scales (read back here), integer
  FULLY_CONNECTED weights;
* ``oneshot_smoothquant_int8``: SmoothQuant (alpha 0.5) leaves the float outputs as they
  were; then a calibrated full-integer int8 file, every matmul int8.

A method that cannot handle a model (no Dense to compress, inputs not divisible by 4 for
2:4) raises a ``ValueError`` in ``keras_llmopt.llm``: the cell is ``refused``.
"""

import keras
import numpy as np

from keras_llmopt._src.benchmark import matrix_checks as checks
from keras_llmopt._src.benchmark import matrix_outcomes as outcomes

CALIBRATION_ROWS = 16
# Int4 groups: the largest of these (all LiteRT block sizes) below and dividing every
# compressed layer's inputs; none fits the matrix's hidden size of 32, which gets one
# scale per output row (-1).
GROUP_SIZES = (128, 64, 32)
# Largest |smoothed - original| of the float logits, relative to the largest |original|.
SMOOTH_RTOL = 1e-3


def _calibration(ctx):
    return ctx.sample(CALIBRATION_ROWS, seed=6)


def _oneshot(ctx, config):
    """``llm.oneshot`` of the row's model (a copy; the row's model is left as it was)."""
    from keras_llmopt._src.llm.oneshot import oneshot

    return oneshot(ctx.model, _calibration(ctx), config, num_samples=CALIBRATION_ROWS)


def _compressed_views(model):
    """``{path: (rows, cols) kernel view}`` of the layers the one-shot report lists."""
    from keras_llmopt._src.llm.linear_targets import select_targets

    report = model.oneshot_report
    paths = {r.path for r in report.layers}
    if not paths:
        raise outcomes.SilentFailure(
            "nothing compressed", f"oneshot ({report.recipe}) compressed no layer"
        )
    _, found = select_targets(model)
    views = {t.path: t.read_view() for t in found if t.path in paths}
    missing = sorted(paths - set(views))
    if missing:
        raise outcomes.SilentFailure(
            "layer lost", f"the one-shot report lists layers the model lacks: {missing[:3]}"
        )
    return views


def _original_views(ctx, compressed):
    """``{path in compressed: the row model's kernel view}``, layers paired in tree order.

    The pass compresses a copy, whose auto-numbered layer names (a Mixtral MoE block's
    ``..._block_14``) may differ from the row model's: layers pair by position, not path.
    """
    from keras_llmopt._src.llm.linear_targets import select_targets

    _, mine = select_targets(compressed)
    _, theirs = select_targets(ctx.model)
    if [t.shape for t in mine] != [t.shape for t in theirs]:
        raise outcomes.SilentFailure(
            "layers changed",
            f"the compressed copy has {len(mine)} Dense / EinsumDense layers of other shapes "
            f"than the model's {len(theirs)}",
        )
    return {a.path: b.read_view() for a, b in zip(mine, theirs)}


def group_size(model):
    """The int4 cells' group size: the largest of ``GROUP_SIZES`` that fits, else -1.

    A group fits when it divides every compressed layer's inputs and is smaller than
    each (a group spanning all of a layer's inputs is one scale per output row, so
    mixing would give the file two granularities).

    Example:
        >>> from keras_llmopt._src.benchmark import matrix_models
        >>> group_size(matrix_models.reference_gpt()), group_size(matrix_models.sequential_lm())
        (32, -1)
    """
    from keras_llmopt._src.llm.linear_targets import select_targets

    _, found = select_targets(model)
    cols = {t.cols for t in found}
    return next((g for g in GROUP_SIZES if cols and all(c % g == 0 and c > g for c in cols)), -1)


# --- sparse cells -----------------------------------------------------------------------


def _check_sparse_rows(views, before, sparsity, what):
    """Every row of every view has exactly ``round(sparsity * cols)`` zeros (or its own)."""
    for path, view in views.items():
        expected = int(round(sparsity * view.shape[1]))
        zeros = np.sum(view == 0.0, axis=1)
        own = np.sum(before[path], axis=1)
        wrong = (zeros < expected) | (zeros > np.maximum(expected, own))
        if np.any(wrong):
            row = int(np.argmax(wrong))
            raise outcomes.SilentFailure(
                f"{int(wrong.sum())} rows not {sparsity:.0%}",
                f"{what}: layer {path!r} row {row} has {int(zeros[row])}/{view.shape[1]} "
                f"zeros, {expected} expected ({int(wrong.sum())}/{view.shape[0]} rows wrong)",
            )


def _check_two_of_four(view):
    """Rows x runs of 4 inputs with fewer than 2 zeros (``None``: cols not divisible by 4)."""
    if view.shape[1] % 4:
        return None
    runs = (view == 0.0).reshape(view.shape[0], -1, 4).sum(-1)
    return int(np.sum(runs < 2))


def _fp32_export(ctx, model, name):

    report = ctx.to_tflite(model, name)
    checks.check_verified(report, f"to_tflite of the {name} model")
    return report


def oneshot_wanda(ctx):
    """Wanda 50 %: half of each output row of every compressed layer zero; fp32 ``.tflite``.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> oneshot_wanda(RowContext(sequential_lm(), "out"))[0]
        'ok 50%'
    """
    from keras_llmopt._src.llm.configs import Wanda

    pruned = _oneshot(ctx, Wanda(0.5))
    views = _compressed_views(pruned)
    before = {p: v == 0.0 for p, v in _original_views(ctx, pruned).items()}
    _check_sparse_rows(views, before, 0.5, "Wanda(0.5)")
    level = sum(float(np.sum(v == 0.0)) for v in views.values()) / sum(
        v.size for v in views.values()
    )
    _, figures = checks.measured(ctx, _fp32_export(ctx, pruned, "oneshot_wanda"), "wanda", label="")
    figures.update(sparsity=level, layers=len(views))
    return f"ok {level:.0%}", figures


def _file_matmul_weights(path):
    """The float constant weights of a ``.tflite``'s matmuls, each as ``(out, in)``.

    FULLY_CONNECTED stores ``[out, in]``; a 2-D constant BATCH_MATMUL operand is
    ``[in, out]`` (``[out, in]`` with ``adj_y``).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as handle:
        data = handle.read()
    model = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    weights = []
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
            if name not in outcomes.MATMULS or op.InputsLength() < 2 or op.Inputs(1) < 0:
                continue
            tensor = subgraph.Tensors(op.Inputs(1))
            if tensor.Type() != schema.TensorType.FLOAT32 or tensor.Sparsity() is not None:
                continue
            raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
            if isinstance(raw, int) or not len(raw):
                continue  # not a constant
            shape = tuple(int(s) for s in tensor.ShapeAsNumpy())
            if len(shape) != 2:
                continue
            value = np.frombuffer(raw.tobytes(), "<f4").reshape(shape)
            if name == "BATCH_MATMUL":
                options = schema.BatchMatMulOptions()
                table = op.BuiltinOptions()
                adj_y = False
                if table is not None:
                    options.Init(table.Bytes, table.Pos)
                    adj_y = bool(options.AdjY())
                value = value if adj_y else value.T
            weights.append(value)
    return weights


def _two_of_four_in_file(path, views):
    """``(found, total)``: compressed layers the fp32 file stores with every zero kept.

    The converter may fold a normalization's scale into the next weight (a per-input
    factor), so weights are matched by their zeros, not their values: a layer is found
    in the file weight of its shape holding every one of its zeros. A weight holding
    most (90 %) but not all of them lost part of the pattern: a silent failure.
    """
    stored = [(w, w == 0.0) for w in _file_matmul_weights(path)]
    found = 0
    for layer, view in views.items():
        zeros = view == 0.0
        kept = [(int(np.sum(zeros & z)), w) for w, z in stored if w.shape == view.shape]
        best, weight = max(kept, key=lambda k: k[0], default=(0, None))
        total = int(zeros.sum())
        if weight is not None and best == total and not _check_two_of_four(weight):
            found += 1
        elif weight is not None and best >= 0.9 * total:
            raise outcomes.SilentFailure(
                "2:4 lost in file",
                f"the fp32 file stores layer {layer!r} with {total - best}/{total} of its "
                f"zeros gone ({_check_two_of_four(weight)} runs of 4 inputs now hold fewer "
                "than 2 zeros)",
            )
    return found, len(views)


def oneshot_sparsegpt_2of4(ctx):
    """SparseGPT 2:4: 2 zeros in every 4 inputs, in the model and in the fp32 file.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> oneshot_sparsegpt_2of4(RowContext(sequential_lm(), "out"))[0]
        'ok 2:4'
    """
    from keras_llmopt._src.llm.configs import SparseGPT

    pruned = _oneshot(ctx, SparseGPT(m_by_n=(2, 4)))
    views = _compressed_views(pruned)
    for path, view in views.items():
        broken = _check_two_of_four(view)
        if broken is None or broken:
            what = "inputs not divisible by 4" if broken is None else f"{broken} runs"
            raise outcomes.SilentFailure(
                "not 2:4",
                f"SparseGPT(m_by_n=(2, 4)): layer {path!r} {view.shape} is not 2:4 ({what} "
                "with fewer than 2 zeros in 4 inputs)",
            )
    report = _fp32_export(ctx, pruned, "oneshot_sparsegpt_2of4")
    found, total = _two_of_four_in_file(report.path, views)
    if not found:
        raise outcomes.SilentFailure(
            "2:4 not in file",
            f"no matmul weight of the fp32 file holds the zeros of any of the {total} 2:4 layers",
        )
    _, figures = checks.measured(ctx, report, "sparsegpt 2:4", label="")
    figures.update(layers=total, layers_in_file=found)
    return "ok 2:4" if found == total else f"ok 2:4 file {found}/{total}", figures


# --- int4 cells -------------------------------------------------------------------------


def _check_grids(model, views, method):
    """The weight grids the pass left: one 4-bit grid per compressed layer, as ``WeightGrid``."""
    from keras_llmopt._src.export.weight_grids import WeightGrid
    from keras_llmopt._src.llm.grid_state import grid_states

    states = dict(grid_states(model))
    missing = sorted(set(views) - set(states))
    if missing:
        raise outcomes.SilentFailure(
            f"{len(missing)} layers off grid",
            f"{method}: {len(missing)}/{len(views)} compressed layers carry no weight grid, "
            f"e.g. {missing[0]!r}",
        )
    grids = []
    for path in views:
        state = states[path]
        if state.bits != 4:
            raise outcomes.SilentFailure(
                f"{state.bits}-bit grid", f"{method}: layer {path!r} has a {state.bits}-bit grid"
            )
        grids.append(WeightGrid(path, state.codes(), np.asarray(state.scales), 4, state.group_size))
    return grids


def _int4_cell(ctx, config, name):
    from keras_llmopt._src.export import weight_grids

    quantized = _oneshot(ctx, config)
    views = _compressed_views(quantized)
    grids = _check_grids(quantized, views, config.describe())
    report = ctx.to_tflite(quantized, name, quantization="int4")
    label = checks.check_weights(report, "int4")
    with open(report.path, "rb") as handle:
        content = handle.read()
    try:  # read back here, apart from the exporter's own check
        weight_grids.check_grids_kept(content, grids)
    except ValueError as error:
        raise outcomes.SilentFailure("grid not kept", f"{config.describe()}: {error}") from None
    text, figures = checks.measured(ctx, report, config.describe(), label=label)
    size = config.group_size
    figures.update(layers=len(views), grids_kept=len(grids), group_size=size)
    return f"{text} {'pc' if size == -1 else f'g{size}'}", figures


def oneshot_gptq_int4(ctx):
    """GPTQ int4 (groups of :func:`group_size`), an int4 file storing GPTQ's grid.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> _ = ctx.warm_up(60)  # int4 on random weights misses top-1 agreement
        >>> text, figures = oneshot_gptq_int4(ctx)
        >>> text.startswith("ok"), figures["grids_kept"]
        (True, 2)
    """
    from keras_llmopt._src.llm.configs import GPTQ

    config = GPTQ(bits=4, group_size=group_size(ctx.model))
    return _int4_cell(ctx, config, "oneshot_gptq_int4")


def oneshot_awq_int4(ctx):
    """AWQ int4 (groups of :func:`group_size`), an int4 file storing AWQ's grid.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> _ = ctx.warm_up(60)
        >>> text, figures = oneshot_awq_int4(ctx)
        >>> text.startswith("ok"), figures["grids_kept"]
        (True, 2)
    """
    from keras_llmopt._src.llm.configs import AWQ

    config = AWQ(bits=4, group_size=group_size(ctx.model))
    return _int4_cell(ctx, config, "oneshot_awq_int4")


# --- SmoothQuant ------------------------------------------------------------------------


def _logits(model, x):
    outputs = keras.tree.flatten(model(x, training=False))
    return np.concatenate([keras.ops.convert_to_numpy(o).reshape(-1) for o in outputs])


def _check_equivalent(ctx, smoothed):
    """The largest relative change of the float logits; over ``SMOOTH_RTOL``: silent."""
    x = ctx.sample(4, seed=8)
    before, after = _logits(ctx.model, x), _logits(smoothed, x)
    change = float(np.abs(after - before).max()) / max(float(np.abs(before).max()), 1e-6)
    if not np.isfinite(change) or change > SMOOTH_RTOL:
        raise outcomes.SilentFailure(
            "outputs moved",
            f"SmoothQuant changed the float model's logits by {change:.3g} of their largest "
            f"magnitude (tolerance {SMOOTH_RTOL:g}); it must leave them equal",
        )
    return change


def _smoothed_layers(ctx, smoothed):
    """``(smoothed, total)`` layers; one reported smoothed with its kernel unchanged is silent."""
    views = _compressed_views(smoothed)
    reported = {r.path for r in smoothed.oneshot_report.layers if "skipped" not in r.method}
    originals = _original_views(ctx, smoothed)
    unchanged = sorted(p for p in reported if np.array_equal(views[p], originals[p]))
    if unchanged:
        raise outcomes.SilentFailure(
            f"{len(unchanged)} layers unsmoothed",
            f"SmoothQuant reports {len(unchanged)} layers smoothed whose kernels did not "
            f"change, e.g. {unchanged[0]!r}",
        )
    return len(reported), len(views)


def oneshot_smoothquant_int8(ctx):
    """SmoothQuant (alpha 0.5), float outputs unchanged, then a calibrated full-int8 file.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import reference_gpt
        >>> text, figures = oneshot_smoothquant_int8(RowContext(reference_gpt(), "out"))
        >>> text.startswith("ok"), figures["smoothed"] > 0
        (True, True)
    """
    from keras_llmopt._src.llm.configs import SmoothQuant

    smoothed = _oneshot(ctx, SmoothQuant(0.5))
    change = _check_equivalent(ctx, smoothed)
    done, total = _smoothed_layers(ctx, smoothed)
    report = ctx.to_tflite(
        smoothed,
        "oneshot_smoothquant_int8",
        quantization="int8",
        representative_dataset=ctx.sample(16, seed=3),
    )
    checks.check_verified(report, "to_tflite(int8, representative_dataset=...) after SmoothQuant")
    checks.require_integer(outcomes.matmul_inputs(report.summary), "int8", "int8")
    text, figures = checks.measured(ctx, report, "smoothquant int8")
    figures.update(smoothed=done, layers=total, float_change=change)
    return f"{text} sq {done}/{total}", figures


CELLS = {
    "oneshot_wanda": oneshot_wanda,
    "oneshot_sparsegpt_2of4": oneshot_sparsegpt_2of4,
    "oneshot_gptq_int4": oneshot_gptq_int4,
    "oneshot_awq_int4": oneshot_awq_int4,
    "oneshot_smoothquant_int8": oneshot_smoothquant_int8,
}
