"""``oneshot``: compress a model once from calibration data, layer group by layer group.

The recipe's configs run in one sequential pass (``llm.sequential``): for each step
(the layers reading one input tensor), each config in order collects the statistics
it needs from the model as compressed so far, then its handler (``llm.methods``)
rewrites the step's kernels. The user's model is copied first unless
``inplace=True``; an interrupted or failed pass leaves it as it was (in place, the
kernels and norms changed so far are written back from host copies).
"""

import dataclasses
import time

import keras
import numpy as np
from absl import logging

from keras_llmopt._src.core import layer_state, model_copy, saving
from keras_llmopt._src.llm import calibration_data as data_lib
from keras_llmopt._src.llm import configs as configs_lib
from keras_llmopt._src.llm import (
    linear_targets,
    methods,
    sequential,
    structural,
    structural_configs,
)


@dataclasses.dataclass
class OneShotReport:
    """What a one-shot pass did.

    Attributes:
        recipe: The configs' descriptions, in order.
        layers: One ``LayerResult`` per layer and config.
        skipped: ``{path: reason}`` of the layers left alone.
        num_samples: Calibration examples used.
        sequence_length: Positions per example.
        steps: Layer groups calibrated one after another.
        seconds: Wall time of the pass.
        peak_held_bytes: The most bytes of calibration statistics held at once.
        activation_bytes: Bytes of one step's input activations over the calibration
            set (what a pass holding a block's inputs would keep), for comparison.

    Example:
        >>> OneShotReport(["wanda 50%"], [], {}, 8, 16, 0, 0.1, 0, 0).recipe
        ['wanda 50%']
    """

    recipe: list
    layers: list
    skipped: dict
    num_samples: int
    sequence_length: int
    steps: int
    seconds: float
    peak_held_bytes: int
    activation_bytes: int

    def layer(self, path, method=None):
        """The result for ``path`` (of the config described ``method``, or the last one)."""
        found = [r for r in self.layers if r.path == path and method in (None, r.method)]
        if not found:
            raise KeyError(f"No result for layer {path!r}. Received: method={method!r}")
        return found[-1]

    def to_record(self):
        """Plain data (JSON)."""
        record = dataclasses.asdict(self)
        record["layers"] = [r.to_dict() for r in self.layers]
        return record

    @classmethod
    def from_record(cls, record):
        """Inverse of :meth:`to_record`."""
        record = dict(record)
        record["layers"] = [methods.LayerResult(**r) for r in record["layers"]]
        return cls(**record)

    def __str__(self):
        lines = [
            f"one-shot {' -> '.join(self.recipe)}: {len(self.layers)} layer results, "
            f"{self.steps} steps, {self.num_samples} samples x {self.sequence_length}, "
            f"{self.seconds:.1f} s"
        ]
        for r in self.layers:
            base = "" if r.baseline_error is None else f" (naive {r.baseline_error:.4f})"
            note = f"  [{r.note}]" if r.note else ""
            lines.append(
                f"  {r.path:<40} {r.method:<22} sparsity {r.sparsity:.3f} "
                f"error {r.error:.4f}{base}{note}"
            )
        for path, reason in self.skipped.items():
            lines.append(f"  {path:<40} skipped: {reason}")
        return "\n".join(lines)


class _Context:
    """What handlers may ask of the pass: the model, a probe of its outputs."""

    def __init__(self, model, probe_batch, keep_zeros):
        self.model = model
        self.probe_batch = probe_batch
        self.keep_zeros = keep_zeros

    def probe_outputs(self):
        outputs = self.model(self.probe_batch, training=False)
        return [keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)]

    def same_outputs(self, before, rtol=1e-3):
        after = self.probe_outputs()
        for a, b in zip(after, before):
            scale = max(float(np.abs(b).max()), 1e-6)
            if float(np.abs(a - b).max()) > rtol * scale:
                return False
        return True


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"oneshot takes a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ValueError(f"oneshot: model {model.name!r} is not built; call it once first.")


def _check_no_states(targets, model):
    for target in targets:
        states = layer_state.states_of(target.layer)
        if states:
            names = sorted({s.technique for s in states})
            raise ValueError(
                f"oneshot: layer {target.path!r} of {model.name!r} already carries {names}; "
                "strip them first (strip_pruning / strip_quantization) so the pass sees plain "
                f"weights. Received: a model with {names} states"
            )


def _plan(model, recipe, batches):
    selections, skipped = [], {}
    by_path = {}
    for config in recipe:
        report, found = linear_targets.select_targets(
            model, config.targets, config.ignore, config.method
        )
        for decision in report.skipped:
            skipped.setdefault(decision.path, decision.reason)
        selections.append({t.path for t in found})
        for target in found:
            by_path.setdefault(target.path, target)
    chosen = set().union(*selections)
    for path in chosen:
        skipped.pop(path, None)
    if not by_path:
        raise ValueError(
            f"oneshot: no Dense / EinsumDense layer of {model.name!r} is selected. Check "
            f"`targets` / `ignore`. Skipped: {dict(list(skipped.items())[:6])}"
        )
    targets = list(by_path.values())
    _check_no_states(targets, model)
    for config, selection in zip(recipe, selections):  # every bad group or N:M before any work
        for target in (t for t in targets if t.path in selection):
            if config.kind == configs_lib.GRID:
                methods.effective_group_size(config, target)
            elif getattr(config, "m_by_n", None) is not None and target.cols % config.m_by_n[1]:
                raise ValueError(
                    f"{type(config).__name__}: the n of `m_by_n` must divide the number of "
                    f"inputs of layer {target.path!r} ({target.cols}). Received: m_by_n="
                    f"{tuple(config.m_by_n)}; accepted: an n dividing {target.cols}, or "
                    "`ignore=` that layer"
                )
    steps, uncalled = sequential.plan_steps(model, targets, batches[0])
    for path in uncalled:
        skipped[path] = "never called by the model's forward pass"
    return steps, selections, skipped


def _sub_step(step, selection):
    targets = [t for t in step.targets if t.path in selection]
    if not targets:
        return None
    return sequential.Step(step.index, targets, step.early_stop, step.norm_path)


def _backup(model):
    return [(v, keras.ops.convert_to_numpy(v)) for v in model.weights]


def _sequence_length(batch):
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(np.shape(first)[1]) if np.ndim(first) > 1 else 1


def oneshot(
    model,
    calibration_data,
    recipe,
    *,
    num_samples=128,
    sequence_length=None,
    batch_size=8,
    inplace=False,
):
    """Compresses ``model`` once with calibration data: Wanda, SparseGPT, GPTQ, AWQ, SmoothQuant.

    Args:
        model: Any Keras 3 model taking token ids (functional, Sequential,
            subclassed, a KerasHub ``CausalLM``).
        calibration_data: Token ids ``(N, T)``, a dict of arrays, a ``tf.data.Dataset``
            or iterable of batches, or strings (a KerasHub CausalLM with a preprocessor).
        recipe: One config (``Wanda(0.5)``) or a list applied in order in one pass
            (``[SparseGPT(0.5), GPTQ(bits=4)]``); dicts with a ``method`` key too.
        num_samples: Calibration examples used.
        sequence_length: Cut examples to this many positions.
        batch_size: Examples per forward pass.
        inplace: Compress ``model`` itself (no copy: for models too big to hold
            twice). Otherwise the model is copied and left untouched.

    Returns:
        The compressed model, with its :class:`OneShotReport` as ``oneshot_report``.
        Sparse methods leave zeros in plain layers; GPTQ / AWQ leave weight-only
        quantized layers (``export.to_tflite(quantization="int4")`` keeps their grid);
        SmoothQuant leaves an equivalent float model for ``quantization.calibrate``.

    Raises:
        ValueError: A bad config, a group size that does not divide a layer's inputs,
            calibration data the model cannot take; nothing is changed.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm.configs import Wanda
        >>> model = reference.build_gpt("tiny")
        >>> data = np.random.default_rng(0).integers(0, 256, (8, 16)).astype("int32")
        >>> pruned = oneshot(model, data, Wanda(0.5), num_samples=8)
        >>> r = pruned.oneshot_report.layer("block_0_mlp_up")
        >>> r.sparsity, r.method
        (0.5, 'wanda 50%')
    """
    _check_model(model)
    recipe = configs_lib.as_recipe(recipe)
    if not isinstance(inplace, bool):
        raise ValueError(f"`inplace` must be True or False. Received: inplace={inplace!r}")
    if any(c.kind == structural_configs.STRUCTURAL for c in recipe):
        pass_args = dict(num_samples=num_samples, sequence_length=sequence_length)
        return _with_structures(model, calibration_data, recipe, pass_args, batch_size, inplace)
    start = time.perf_counter()
    batches = data_lib.calibration_batches(
        model, calibration_data, num_samples, sequence_length, batch_size
    )
    work = model if inplace else model_copy.copy_model(model, "oneshot")
    steps, selections, skipped = _plan(work, recipe, batches)
    backup = _backup(work) if inplace else None
    context = _Context(work, sequential._first_example(batches[0]), keep_zeros=False)
    results, peak, activation_bytes = [], 0, 0
    try:
        for step in steps:
            context.keep_zeros = False
            for config, selection in zip(recipe, selections):
                sub = _sub_step(step, selection)
                if sub is None:
                    continue
                stats = sequential.collect_statistics(work, batches, sub, config.statistics)
                peak = max(peak, sum(s.nbytes for s in stats.values()))
                rows = next(iter(stats.values())).count
                activation_bytes = max(activation_bytes, rows * sub.targets[0].cols * 4)
                logging.info(
                    "oneshot: step %d/%d %s: %s",
                    step.index + 1,
                    len(steps),
                    config.describe(),
                    sub.paths,
                )
                results.extend(methods.handler_for(config)(config, sub, stats, context))
                if config.kind == configs_lib.SPARSE:
                    context.keep_zeros = True
    except BaseException:
        if backup is not None:
            for _, state in layer_state.find_states(work, "weight_grid"):
                layer_state.remove(state.get_owner(), "weight_grid")
            for variable, value in backup:
                variable.assign(value)
            saving.make_saveable(work)
        raise
    saving.make_saveable(work)
    report = OneShotReport(
        recipe=[c.describe() for c in recipe],
        layers=results,
        skipped=skipped,
        num_samples=sum(len(_first(b)) for b in batches),
        sequence_length=_sequence_length(batches[0]),
        steps=len(steps),
        seconds=time.perf_counter() - start,
        peak_held_bytes=int(peak),
        activation_bytes=int(activation_bytes),
    )
    object.__setattr__(work, "oneshot_report", report)
    logging.info("%s", report)
    return work


def _with_structures(model, calibration_data, recipe, pass_args, batch_size, inplace):
    """Runs a recipe holding structural configs: each rebuilds the model, in order."""
    if inplace:
        raise ValueError(
            "oneshot: structural configs build a new, smaller model, so `inplace=True` "
            f"cannot apply. Received: {[c.describe() for c in recipe]} with inplace=True"
        )
    current, pending, reports = model, [], []
    for config in [*recipe, None]:
        if config is not None and config.kind != structural_configs.STRUCTURAL:
            pending.append(config)
            continue
        if pending:
            current = oneshot(
                current, calibration_data, pending, batch_size=batch_size, **pass_args
            )
            pending = []
        if config is not None:
            current = structural.prune_structures(
                current, calibration_data, config, batch_size=batch_size, **pass_args
            )
            reports.append(current.structural_report)
    object.__setattr__(current, "structural_reports", reports)
    return current


def _first(batch):
    return next(iter(batch.values())) if isinstance(batch, dict) else batch


def _shorthand(config_class):
    def compress(model, calibration_data, **kwargs):
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k not in _PASS_ARGS}
        return oneshot(model, calibration_data, config_class(**settings), **kwargs)

    return compress


_PASS_ARGS = ("num_samples", "sequence_length", "batch_size", "inplace")
wanda = _shorthand(configs_lib.Wanda)
sparsegpt = _shorthand(configs_lib.SparseGPT)
gptq = _shorthand(configs_lib.GPTQ)
awq = _shorthand(configs_lib.AWQ)
smoothquant = _shorthand(configs_lib.SmoothQuant)
for _name, _cls in (
    ("wanda", configs_lib.Wanda),
    ("sparsegpt", configs_lib.SparseGPT),
    ("gptq", configs_lib.GPTQ),
    ("awq", configs_lib.AWQ),
    ("smoothquant", configs_lib.SmoothQuant),
):
    globals()[_name].__name__ = _name
    globals()[_name].__doc__ = (
        f"``oneshot(model, data, {_cls.__name__}(**settings), ...)``: settings and pass "
        f"arguments (num_samples, sequence_length, batch_size, inplace) as keywords.\n\n"
        f"    Example:\n        >>> {_name}.__name__\n        '{_name}'\n"
    )
