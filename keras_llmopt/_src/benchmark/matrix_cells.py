"""The model matrix's columns: one technique or artifact on one model, measured.

A cell runs the package's own entry points (the functions ``keras_llmopt.sparsity``,
``.quantization``, ``.clustering`` and ``.export`` re-export) on a tiny model and gives
one of four outcomes:

* ``ok``: a verified artifact (or equal outputs after a save/load round trip) that is what
  its mode says (an ``int8`` file has int8 inputs on every FULLY_CONNECTED and
  BATCH_MATMUL), with its size against the model's fp32 ``.tflite``;
* ``refused``: a ``ValueError`` / ``TypeError`` raised by keras_llmopt on purpose, before
  it staged an artifact;
* ``fail``: any other exception (a failed verification or artifact check included);
* ``silent``: the call returned, but the result is not what it claims (float matmuls in
  an integer file, an unverified report, outputs that change on reload, weights not
  pruned or clustered). These are the bugs that matter most.
"""

import os
import time

import keras
import numpy as np

from keras_llmopt._src.benchmark import matrix_checks as checks
from keras_llmopt._src.benchmark import matrix_generation, matrix_oneshot, matrix_structural
from keras_llmopt._src.benchmark import matrix_outcomes as outcomes

SEQUENCE_LENGTH = 16


class RowContext:
    """One model's inputs, sample data, work folder and shared intermediates.

    Args:
        model: The built model of the row (:meth:`warm_up` trains it; cells never
            modify it).
        work_dir: Folder for this row's artifacts.
        sequence_length: Length of every exported input.

    Example:
        >>> from keras_llmopt._src.benchmark import matrix_models
        >>> ctx = RowContext(matrix_models.sequential_lm(), "out")
        >>> ctx.sample(2).shape
        (2, 16)
    """

    def __init__(self, model, work_dir, sequence_length=SEQUENCE_LENGTH):
        from keras_llmopt._src.core.model_inputs import describe_inputs

        self.model = model
        self.work_dir = work_dir
        self.inputs = describe_inputs(model, sequence_length)
        self.sequence_length = self.inputs.sequence_length or sequence_length
        self._memo = {}

    def path(self, name):
        """A path in the row's work folder."""
        os.makedirs(self.work_dir, exist_ok=True)
        return os.path.join(self.work_dir, name)

    def sample(self, rows, seed=0):
        """``rows`` random valid inputs, packed the way the model takes them."""
        rng = np.random.default_rng(seed)
        vocab = self.inputs.vocabulary_size or 256
        values = []
        for spec in self.inputs.specs:
            shape = (rows, *spec.shape[1:])
            if spec.is_mask:
                values.append(np.ones(shape, spec.dtype))
            elif spec.is_tokens:
                values.append(rng.integers(0, vocab, shape).astype(spec.dtype))
            elif "position" in spec.name:
                values.append(np.broadcast_to(np.arange(shape[1]), shape).astype(spec.dtype))
            else:
                values.append(rng.integers(0, 2, shape).astype(spec.dtype))
        return self.inputs.pack(values)

    def training_data(self, rows=4):
        """``(x, y)``: random inputs and next-token targets for a few fit steps."""
        x = self.sample(rows, seed=1)
        tokens = x[self.inputs.token_input] if isinstance(x, dict) else x
        return x, np.roll(tokens, -1, axis=1)

    def shared(self, key, build):
        """``build()`` once per row; its error is re-raised for every later caller."""
        if key not in self._memo:
            try:
                self._memo[key] = (build(), None)
            except Exception as error:  # each dependent cell reports the same outcome
                self._memo[key] = (None, error)
        value, error = self._memo[key]
        if error is not None:
            raise error
        return value

    def fp32_size(self):
        """Bytes of the row's verified fp32 ``.tflite`` (every size ratio's denominator)."""
        return self.shared("fp32", lambda: self.to_tflite(self.model, "fp32").size_bytes)

    def qat_model(self, scheme="default_8bit"):
        """The row's quantization-aware copy, calibrated (minmax) on 8 random rows."""

        def build():
            from keras_llmopt._src.quantization import calibrate, quantize

            q = quantize.quantize_model(self.model, scheme=scheme)
            calibrate.calibrate(q, self.sample(8, seed=2), batch_size=4)
            return q

        return self.shared(f"qat_{scheme}", build)

    def to_tflite(self, model, name, **kwargs):
        """``export.to_tflite`` of ``model`` to ``<name>.tflite`` at the row's length."""
        from keras_llmopt._src.export.tflite import to_tflite

        return to_tflite(
            model, self.path(f"{name}.tflite"), sequence_length=self.sequence_length, **kwargs
        )

    def warm_up(self, steps, learning_rate=1e-2, batch_size=16):
        """Trains the row's model a little on a learnable task (next token = token + 1).

        An untrained model's logits are near ties, so the top-1 agreement every export
        is verified on is noise there; a few steps give confident predictions, as a
        trained model has, and the integer modes are then judged fairly.
        """
        if not steps:
            return None
        self.model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x = self.sample(batch_size * steps, seed=5)
        tokens = x[self.inputs.token_input] if isinstance(x, dict) else x
        vocab = self.inputs.vocabulary_size or 256
        history = self.model.fit(
            x, (tokens + 1) % vocab, batch_size=batch_size, epochs=1, shuffle=False, verbose=0
        )
        return float(history.history["loss"][-1])

    def fit(self, model, callbacks=None):
        """Two training steps (batch 2) of ``model`` on :meth:`training_data`."""
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        x, y = self.training_data()
        model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=callbacks or [])
        return model


# --- measuring --------------------------------------------------------------------------


# --- cells ----------------------------------------------------------------------------


def pruned_model(ctx):
    """The row's model pruned to 50% (two fit steps), still carrying its masks.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> pruned_model(ctx).pruning_report.selected_paths
        ['hidden_1', 'hidden_2']
    """

    def build():
        from keras_llmopt._src.sparsity import callbacks, prune, schedules

        pruned = prune.prune_low_magnitude(
            ctx.model, schedules.ConstantSparsity(0.5, 0, frequency=1)
        )
        return ctx.fit(pruned, callbacks=[callbacks.UpdatePruningStep()])

    return ctx.shared("pruned", build)


def qat_model(ctx, scheme="default_8bit"):
    """The row's quantization-aware copy (``RowContext.qat_model``).

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> qat_model(ctx).quantize_report.scheme
        'default_8bit'
    """
    return ctx.qat_model(scheme)


def prune_strip(ctx):
    """50% magnitude pruning, stripped, fp32 ``.tflite`` in the sparse encoding.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> text, figures = prune_strip(ctx)
        >>> text.startswith("ok"), text.endswith("50%sp")
        (True, True)
    """
    from keras_llmopt._src.sparsity import report as sparsity_report
    from keras_llmopt._src.sparsity import strip

    stripped = strip.strip_pruning(pruned_model(ctx))
    sparsity = sparsity_report.sparsity_report(stripped)
    pruned = [w for w in sparsity.weights if w.sparsity > 0]
    if not pruned:
        raise outcomes.SilentFailure(
            "no zeros", "strip_pruning returned a model with no zero weights"
        )
    level = sum(w.size - w.nonzeros for w in pruned) / sum(w.size for w in pruned)
    if level < 0.45:
        raise outcomes.SilentFailure(
            f"{level:.0%} zeros", f"pruned weights are {level:.0%} zero, target 50%"
        )
    text, figures = checks.measured(ctx, ctx.to_tflite(stripped, "pruned", sparse=True), "prune")
    figures["sparsity"] = level
    return f"{text} {level:.0%}sp", figures


def qat_int8(ctx):
    """Quantization-aware (calibrated) model to a full-integer int8 ``.tflite``.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> text, figures = qat_int8(ctx)
        >>> text.startswith("ok"), text.endswith("int8")
        (True, True)
    """
    report = ctx.to_tflite(qat_model(ctx), "qat_int8", quantization="int8")
    checks.check_verified(report, "to_tflite(int8) of a QAT model")
    checks.require_integer(outcomes.matmul_inputs(report.summary), "int8", "int8")
    return checks.measured(ctx, report, "qat int8")


def ptq_int8(ctx):
    """The float model, calibrated by the converter on 16 rows, to full-integer int8.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> text, figures = ptq_int8(ctx)
        >>> text.startswith("ok"), text.endswith("int8")
        (True, True)
    """
    data = ctx.sample(16, seed=3)
    report = ctx.to_tflite(ctx.model, "ptq_int8", quantization="int8", representative_dataset=data)
    checks.check_verified(report, "to_tflite(int8, representative_dataset=...)")
    checks.require_integer(outcomes.matmul_inputs(report.summary), "int8", "int8")
    return checks.measured(ctx, report, "ptq int8")


def int16x8(ctx):
    """Calibrated post-training 16-bit activations, 8-bit weights.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> text, figures = int16x8(ctx)
        >>> text.startswith("ok"), text.endswith("16x8")
        (True, True)
    """
    data = ctx.sample(16, seed=3)
    report = ctx.to_tflite(
        ctx.model, "int16x8", quantization="int16x8", representative_dataset=data
    )
    checks.check_verified(report, "to_tflite(int16x8)")
    checks.require_integer(outcomes.matmul_inputs(report.summary), "int16", "int16x8")
    return checks.measured(ctx, report, "int16x8")


def dynamic_int8(ctx):
    """Dynamic-range int8: int8 weights, activations quantized on the fly.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> text, figures = dynamic_int8(ctx)
        >>> text.startswith("ok"), text.endswith("w-int")
        (True, True)
    """
    report = ctx.to_tflite(ctx.model, "dynamic_int8", quantization="dynamic_int8")
    return checks.measured(
        ctx, report, "dynamic int8", label=checks.check_weights(report, "dynamic_int8")
    )


def int4(ctx):
    """Int4 weights (AI Edge Quantizer on the fp32 file).

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> _ = ctx.warm_up(60)  # int4 on random weights misses top-1 agreement
        >>> text, figures = int4(ctx)
        >>> text.startswith("ok"), text.endswith("w-int")
        (True, True)
    """
    report = ctx.to_tflite(ctx.model, "int4", quantization="int4")
    return checks.measured(ctx, report, "int4", label=checks.check_weights(report, "int4"))


def cluster(ctx):
    """16-cluster k-means weights, stripped, fp32 ``.tflite``; at most 16 values per kernel.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> text, figures = cluster(ctx)
        >>> text.startswith("ok"), text.endswith("v")
        (True, True)
    """
    from keras_llmopt._src.clustering import cluster as clustering
    from keras_llmopt._src.core.layer_tree import walk_layers

    clustered = clustering.cluster_weights(ctx.model, 16)
    stripped = clustering.strip_clustering(clustered)
    clustered_paths = set(clustered.clustering_report.selected_paths)
    most = 0
    for node in walk_layers(stripped):
        kernel = getattr(node.layer, "kernel", None)
        if kernel is None or node.path not in clustered_paths:
            continue
        most = max(most, len(np.unique(keras.ops.convert_to_numpy(kernel))))
    if most > 16:
        raise outcomes.SilentFailure(
            f"{most} values", f"a clustered kernel has {most} distinct values after stripping"
        )
    text, figures = checks.measured(ctx, ctx.to_tflite(stripped, "clustered"), "cluster")
    figures["max_distinct"] = most
    return f"{text} <={most}v" if most else text, figures


def onnx(ctx):
    """``export.to_onnx``, verified in ONNX Runtime.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> onnx(ctx)[1]["top1"]
        1.0
    """
    from keras_llmopt._src.export.onnx_export import to_onnx

    report = to_onnx(
        ctx.model, ctx.path("model.onnx"), sequence_length=ctx.sequence_length, batch_size=1
    )
    return checks.measured(ctx, report, "to_onnx", label="")


def saved_model(ctx):
    """``export.to_saved_model``, verified in TensorFlow.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> saved_model(ctx)[0].startswith("ok")
        True
    """
    from keras_llmopt._src.export.saved_model import to_saved_model

    report = to_saved_model(
        ctx.model, ctx.path("saved_model"), sequence_length=ctx.sequence_length, batch_size=1
    )
    return checks.measured(ctx, report, "to_saved_model", label="")


def save_load(ctx):
    """``.keras`` round trip of the pruned and of the QAT model: outputs must be equal.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> ctx = RowContext(sequential_lm(), "out")
        >>> save_load(ctx)[0]
        'ok pruned+qat equal'
    """
    x = ctx.sample(2, seed=4)
    worst = {}
    classes = {type(ctx.model).__name__: type(ctx.model)}
    for name, build in (("pruned", pruned_model), ("qat", qat_model)):
        model = build(ctx)
        path = ctx.path(f"{name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, custom_objects=classes)
        before = keras.ops.convert_to_numpy(model(x, training=False))
        after = keras.ops.convert_to_numpy(loaded(x, training=False))
        worst[name] = float(np.max(np.abs(before - after)))
        if worst[name] > 1e-5 * max(1.0, float(np.max(np.abs(before)))):
            raise outcomes.SilentFailure(
                f"{name} reload differs",
                f"{name} model's outputs change on reload by {worst[name]:.3g}",
            )
    return "ok pruned+qat equal", {"max_abs_diff": worst}


# Cell name -> function(ctx) -> (text, figures); the order is the table's order.
CELLS = {
    "prune_strip": prune_strip,
    "qat_int8": qat_int8,
    "ptq_int8": ptq_int8,
    "int16x8": int16x8,
    "dynamic_int8": dynamic_int8,
    "int4": int4,
    "cluster": cluster,
    "onnx": onnx,
    "saved_model": saved_model,
    "save_load": save_load,
    **matrix_generation.CELLS,
    **matrix_oneshot.CELLS,
    **matrix_structural.CELLS,
}
# Cells that claim integer matmuls (a float matmul there is a silent failure).
INTEGER_CELLS = ("qat_int8", "ptq_int8", "int16x8", "generator_int8", "oneshot_smoothquant_int8")


def run_cell(ctx, name, time_limit=None):
    """Runs cell ``name`` on a row and returns its :class:`Cell` (never raises).

    ``time_limit``: seconds after which the cell is stopped and reported as a failure
    (the converter's calibration of a large graph can run for many minutes).

    Example:
        >>> from keras_llmopt._src.benchmark import matrix_models
        >>> ctx = RowContext(matrix_models.sequential_lm(), "out")
        >>> run_cell(ctx, "dynamic_int8").status
        'ok'
    """
    start = time.perf_counter()
    try:
        with outcomes.time_limit(time_limit):
            text, figures = CELLS[name](ctx)
        cell = outcomes.Cell(outcomes.OK, text, figures)
    except Exception as error:  # every outcome is a table cell
        status, text = outcomes.classify(error)
        cell = outcomes.Cell(status, text, message=f"{type(error).__name__}: {error}")
    cell.seconds = time.perf_counter() - start
    return cell
