"""The sequential calibration pass: each group of layers sees its inputs as compressed so far.

The model is never cut apart, so every Keras model works the same way (functional,
Sequential, subclassed, KerasHub): one probe call on a single example records the
order in which target layers are called and which of them read the same tensor
(the query, key and value projections of one attention, the gate and up projections
of one gated MLP). Those form the *steps*. For each step, the calibration batches run
through the model, already compressed up to that step, with hooks on the step's
layers that add their inputs to streaming statistics; the forward pass stops as soon
as every layer of the step has been seen, so nothing after it runs and no activation
is kept between batches. Compressing block i therefore uses the outputs of blocks
0..i-1 already compressed, as the SparseGPT and GPTQ papers do ("true sequential").
"""

import contextlib
import dataclasses

import keras

from keras_llmopt._src.core import hooks, layer_tree
from keras_llmopt._src.llm import statistics as stats_lib


class _StopForward(Exception):
    """Raised by a hook once a step has seen all its layers (ends the forward pass)."""


def _first_input(args, kwargs):
    if args:
        return args[0]
    for key in ("inputs", "x", "hidden_states", "query"):
        if key in kwargs:
            return kwargs[key]
    return next(iter(kwargs.values()))


def is_norm(layer):
    """Whether ``layer`` looks like a normalization (its class name, vector weights only).

    Example:
        >>> import keras
        >>> norm = keras.layers.LayerNormalization()
        >>> norm.build((None, 4))
        >>> is_norm(norm), is_norm(keras.layers.Dense(2))
        (True, False)
    """
    name = type(layer).__name__.lower()
    if "norm" not in name or not layer.built:
        return False
    weights = layer.weights
    return bool(weights) and all(len(w.shape) == 1 for w in weights)


@dataclasses.dataclass
class Step:
    """Target layers calibrated together (they read the same input tensor).

    Attributes:
        index: Position in the pass.
        targets: The ``LinearTarget`` s.
        early_stop: Whether the forward pass may stop once all were seen (no target
            of the step is called twice per forward).
        norm_path: Path of the normalization whose output is the step's input, or
            ``None`` (where SmoothQuant / AWQ can fold their scales).
    """

    index: int
    targets: list
    early_stop: bool = True
    norm_path: str | None = None

    @property
    def paths(self):
        """The paths of the step's layers."""
        return [t.path for t in self.targets]


def plan_steps(model, targets, example_batch):
    """Groups ``targets`` into steps from one probe call of ``model``.

    Args:
        model: The model.
        targets: ``LinearTarget`` s to compress.
        example_batch: A model-ready batch; its first example is used.

    Returns:
        ``(steps, uncalled)``: the steps in call order and the paths of targets the
        forward pass never called (left alone).

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm import linear_targets
        >>> model = reference.build_gpt("tiny")
        >>> _, found = linear_targets.select_targets(model)
        >>> steps, uncalled = plan_steps(model, found, np.zeros((1, 8), "int32"))
        >>> steps[0].paths
        ['block_0_attention/query', 'block_0_attention/key', 'block_0_attention/value']
        >>> steps[0].norm_path, uncalled
        ('block_0_ln1', [])
    """
    by_path = {t.path: t for t in targets}
    calls = []  # (path, input tensor)
    norm_outputs = []  # (path, output tensor)

    def on_call(path, args, kwargs):
        calls.append((path, _first_input(args, kwargs)))

    def norm_recorder(path):
        def make(original):
            def hooked(*args, **kwargs):
                out = original(*args, **kwargs)
                norm_outputs.append((path, out))
                return out

            return hooked

        return make

    norms = {node.path: node.layer for node in layer_tree.walk_layers(model) if is_norm(node.layer)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(hooks.capture_inputs({t.path: t.layer for t in targets}, on_call))
        for path, layer in norms.items():
            stack.enter_context(hooks.intercept(layer, "call", norm_recorder(path)))
        model(_first_example(example_batch), training=False)
    counts = {}
    for path, _ in calls:
        counts[path] = counts.get(path, 0) + 1
    steps, seen = [], set()
    previous_input = None
    for path, tensor in calls:
        if path in seen:
            continue
        seen.add(path)
        if steps and tensor is previous_input:
            steps[-1].targets.append(by_path[path])
        else:
            norm = next((p for p, out in norm_outputs if out is tensor), None)
            steps.append(Step(len(steps), [by_path[path]], norm_path=norm))
        previous_input = tensor
        steps[-1].early_stop = all(counts[p] == 1 for p in steps[-1].paths)
    uncalled = [t.path for t in targets if t.path not in seen]
    return steps, uncalled


def _first_example(batch):
    if isinstance(batch, dict):
        return {k: v[:1] for k, v in batch.items()}
    return batch[:1]


def collect_statistics(model, batches, step, needs, sample_rows=512):
    """Runs the calibration batches and returns ``{path: InputStatistics}`` for ``step``.

    Args:
        model: The model (compressed up to this step).
        batches: Model-ready batches.
        step: A :class:`Step`.
        needs: Statistics names (``statistics.KNOWN``).
        sample_rows: Input rows kept per layer when ``"sample"`` is needed.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm import linear_targets
        >>> model = reference.build_gpt("tiny")
        >>> _, found = linear_targets.select_targets(model)
        >>> batches = [np.zeros((2, 8), "int32")]
        >>> steps, _ = plan_steps(model, found, batches[0])
        >>> seen = collect_statistics(model, batches, steps[0], ("sq_norm",))
        >>> seen["block_0_attention/query"].count
        16
    """
    found = {t.path: stats_lib.InputStatistics(t.cols, needs, sample_rows) for t in step.targets}
    by_path = {t.path: t for t in step.targets}
    seen = set()

    def on_call(path, args, kwargs):
        x = keras.ops.convert_to_numpy(_first_input(args, kwargs))
        found[path].update(by_path[path].input_rows(x))
        seen.add(path)
        if step.early_stop and len(seen) == len(found):
            raise _StopForward()

    with hooks.capture_inputs({t.path: t.layer for t in step.targets}, on_call=on_call):
        for batch in batches:
            seen.clear()
            try:
                model(batch, training=False)
            except _StopForward:
                pass
    return found
