"""Keras 3's own GPTQ and AWQ rows: ``model.quantize("gptq" | "awq", config=...)``.

The anchors of ``klo_gptq_int4`` / ``klo_awq_int4``: the same reference model, the same
128 calibration windows (``oneshot_variants.calibration_windows``), 4 bits in groups of
``oneshot_variants.group_size``, and for GPTQ a symmetric grid, no activation order and
damping 0.01. Keras has no TFLite path for these layers, so the rows are measured in
Keras (``Built.model``), as ``keras_int8`` / ``keras_int4`` are.

What Keras 3.15.1 needs, and how it is given:

- A layer structure: the blocks to calibrate one after the other. It is cut from the
  reference model's own graph: the pre-block model (tokens to ``block_0_ln1``'s input),
  one functional model per block (``block_i_ln1``'s input to ``block_i_add2``'s output),
  and the head (``final_ln``'s input to ``lm_head``'s output) as a last segment, so
  ``lm_head`` is calibrated too (``klo_*`` rows quantize it; Keras only calibrates the
  Dense / EinsumDense layers found inside a segment and leaves any other float).
- The data: Keras concatenates the dataset's tokens and cuts its own windows from the
  stream (strided, from an offset drawn from Python's salted ``hash``, so it moves from
  one process to the next). The windows are written into the stream at the positions
  Keras's sampler reads in this process, and the sampler's output is checked to be
  exactly the calibration windows, in order.
- A tokenizer: required even for token ids (never called for them); an identity
  function is given.
- Saving: ``GPTQConfig`` / ``AWQConfig.get_config`` keep ``quantization_layer_structure``,
  and every quantized layer serializes its config, so the structure's models (which hold
  those layers) recurse without end in ``model.save`` (``RecursionError``). The structure
  and the dataset are dropped from the config once ``quantize`` has returned.

Keras 3.15.1 does not calibrate at all (keras-team/keras#23512, a regression from #21641,
inherited by AWQ in #21992): ``model.quantize`` first switches every Dense / EinsumDense
to its quantized mode, after which ``Operation.__call__`` runs ``layer.quantized_call``,
so the hooks it patches onto ``layer.call`` to collect the calibration inputs never run.
GPTQ's Hessians stay zero (it becomes round-to-nearest) and AWQ's activation statistics
stay zero (its scale search is blind to the data), with no error. Each row checks this
first (:func:`keras_calibrates`) and, where Keras does not calibrate, still measures
what a user of that release gets, with the bug named in the row's notes: the anchor is
Keras as shipped.
"""

import copy
import os
import time
import warnings

import numpy as np
from absl import logging

from keras_llmopt._src.benchmark import oneshot_variants
from keras_llmopt._src.benchmark.context import Built


def _identity(tokens):
    """The tokenizer handed to Keras: the dataset is token ids already."""
    return tokens


def layer_structure(model, num_layers):
    """Keras's ``quantization_layer_structure`` for the reference GPT ``model``.

    Args:
        model: The reference GPT (functional, with its layer names).
        num_layers: Its number of blocks.

    Returns:
        ``{"pre_block_layers": [tokens -> block input], "sequential_blocks": [one model
        per block, then final_ln -> lm_head]}``, every model sharing ``model``'s layers.

    Example:
        >>> structure = layer_structure(model, 4)
        >>> len(structure["sequential_blocks"])
        5
    """
    import keras

    def segment(first, last, name):
        return keras.Model(model.get_layer(first).input, model.get_layer(last).output, name=name)

    pre_block = keras.Model(model.input, model.get_layer("block_0_ln1").input, name="pre_block")
    blocks = [segment(f"block_{i}_ln1", f"block_{i}_add2", f"block_{i}") for i in range(num_layers)]
    blocks.append(segment("final_ln", "lm_head", "head"))
    return {"pre_block_layers": [pre_block], "sequential_blocks": blocks}


def keras_dataset(windows):
    """``(dataset, exact)``: token ids Keras's calibration sampler cuts into ``windows``.

    Keras (3.15.1, ``gptq_core.get_dataloader``, also used by AWQ) flattens the dataset
    into one stream and cuts ``num_samples`` windows from it at strided starts. The
    starts are probed with a stream of positions, the windows written there, and the
    sampler's output compared with ``windows``.

    Returns:
        The dataset (a list holding one int32 stream) and whether Keras's sampler was
        checked to return exactly ``windows`` (``False``: the plain concatenation, when
        the sampler cannot be probed; Keras then cuts windows of its own from it).

    Example:
        >>> dataset, exact = keras_dataset(windows)
        >>> exact
        True
    """
    count, length = windows.shape
    stream = np.ascontiguousarray(windows, dtype=np.int32).reshape(-1)
    from keras_llmopt._src.core.keras_compat import keras_calibration_sampler

    get_dataloader = keras_calibration_sampler()
    if get_dataloader is None:  # a later Keras: the plain stream, cut as that Keras cuts it
        return [stream], False

    def sample(data):
        return get_dataloader(_identity, length, data, num_samples=count)[:, 0, :]

    total = count * length + length - 1  # Keras's stride is then exactly `length`
    starts = sample([np.arange(total, dtype=np.int32)])[:, 0].astype(np.int64)
    arranged = np.zeros(total, np.int32)
    for start, window in zip(starts, windows):
        arranged[start : start + length] = window
    dataset = [arranged]
    if not np.array_equal(sample(dataset), windows):
        return [stream], False
    return dataset, True


def _saved_size(ctx, model, name):
    path = ctx.path(f"{name}.keras")
    model.save(path)
    return os.path.getsize(path)


def _keras_config(mode, ctx, windows, dataset, structure):
    import keras

    common = {
        "weight_bits": 4,
        "num_samples": len(windows),
        "sequence_length": windows.shape[1],
        "group_size": oneshot_variants.group_size(ctx),
        "quantization_layer_structure": structure,
    }
    if mode == "gptq":
        return keras.quantizers.GPTQConfig(
            dataset,
            _identity,
            hessian_damping=0.01,
            symmetric=True,
            activation_order=False,
            **common,
        )
    return keras.quantizers.AWQConfig(dataset, _identity, **common)  # grid points: 20


def quantized_layers(model, mode):
    """Paths of ``model``'s leaf layers Keras quantized and calibrated with ``mode``.

    Example:
        >>> "lm_head" in quantized_layers(built.model, "gptq")
        True
    """
    return [
        layer.path
        for layer in model._flatten_layers()
        if getattr(layer, "quantization_mode", None) == mode
        and getattr(layer, f"is_{mode}_calibrated", False)
    ]


class KerasCalibrationBug(RuntimeError):
    """Keras's ``model.quantize("gptq" | "awq")`` would not use the calibration data."""


# What the hooks of each mode collect, and where (Keras 3.15.1 internals).
_PROBES = {
    "gptq": ("gptq", "GPTQ", "stream_hessians", "hessian", "Hessians", "round-to-nearest"),
    "awq": (
        "awq",
        "AWQ",
        "stream_activations",
        "activation_magnitudes",
        "activation statistics",
        "an activation-blind scale search",
    ),
}


def keras_calibrates(mode):
    """Whether Keras's ``mode`` calibration hooks see a layer's inputs inside ``quantize``.

    A Dense layer is put in ``mode`` as ``model.quantize`` puts every layer before it
    calibrates, then called inside Keras's own capture context (``stream_hessians`` /
    ``stream_activations``); the statistic it fills must be non-zero.

    Returns:
        ``True`` / ``False``, or ``None`` when this Keras has no such internals to probe.

    Example:
        >>> keras_calibrates("gptq")  # Keras 3.15.1: keras-team/keras#23512
        False
    """
    import importlib

    import keras

    module, cls, capture, statistic, _, _ = _PROBES[mode]
    try:
        core = importlib.import_module(f"keras.src.quantizers.{module}_core")
        method = getattr(importlib.import_module(f"keras.src.quantizers.{module}"), cls)
        stream = getattr(core, capture)
    except (ImportError, AttributeError):
        return None
    config_class = keras.quantizers.GPTQConfig if mode == "gptq" else keras.quantizers.AWQConfig
    config = config_class([np.zeros(8, np.int32)], _identity, group_size=-1)
    layer = keras.layers.Dense(4)
    layer.build((None, 8))
    layer.quantize(mode, config=config)
    collector = method(layer, config)
    with stream({"probe": layer}, {"probe": collector}):
        layer(np.ones((2, 8), np.float32))
    return bool(np.any(keras.ops.convert_to_numpy(getattr(collector, statistic))))


def _calibration_bug(mode):
    """What is wrong with this Keras's ``mode`` calibration, or ``None``."""
    if keras_calibrates(mode) is not False:
        return None
    import keras

    _, _, capture, _, what, result = _PROBES[mode]
    return (
        f"Keras {keras.__version__}'s model.quantize({mode!r}) does not calibrate "
        "(keras-team/keras#23512): it switches every Dense / EinsumDense to its quantized "
        "mode first, so Operation.__call__ runs layer.quantized_call and the hooks "
        f"{capture} patches onto layer.call never see an input; the {what} stay zero and "
        f"the result is data-free ({result}), with no error. Checked on a Dense in "
        f"{mode!r} mode called inside {capture}. Fixed upstream after this release."
    )


def build_keras_native(ctx, mode, require_calibration=True):
    """``model.quantize(mode, config=...)`` (``"gptq"`` / ``"awq"``) on a copy, as a Built.

    Args:
        ctx: The ``BenchmarkContext``.
        mode: ``"gptq"`` or ``"awq"``.
        require_calibration: Raise :class:`KerasCalibrationBug` when this Keras would
            not use the calibration data (:func:`keras_calibrates`); ``False`` builds
            what Keras gives anyway, the bug named in the notes.

    Returns:
        A ``Built`` holding the quantized Keras model, its saved size and the quantize
        call's wall time as ``calibration_seconds``.

    Example:
        >>> built = build_keras_native(ctx, "gptq", require_calibration=False)
    """
    bug = _calibration_bug(mode)
    if bug and require_calibration:
        raise KerasCalibrationBug(bug)
    windows = oneshot_variants.calibration_windows(ctx)
    dataset, exact = keras_dataset(windows)
    model = copy.deepcopy(ctx.model)
    structure = layer_structure(model, ctx.config.num_layers)
    config = _keras_config(mode, ctx, windows, dataset, structure)
    logging.info("benchmark: Keras model.quantize(%r) on %d windows", mode, len(windows))
    start = time.perf_counter()
    with warnings.catch_warnings():  # "Layer Add does not have a quantize method", ...
        warnings.simplefilter("ignore", UserWarning)
        model.quantize(mode, config=config)
    seconds = time.perf_counter() - start
    config.quantization_layer_structure = None  # else model.save recurses (see above)
    config.dataset = None
    data = (
        f"exactly the {len(windows)} calibration windows (checked against Keras's sampler)"
        if exact
        else f"Keras's own cut of the {len(windows)} calibration windows' tokens"
    )
    grid = "symmetric, no act_order, damping 0.01" if mode == "gptq" else "asymmetric"
    notes = [
        f"Keras 3 model.quantize({mode!r}, config={type(config).__name__}(4 bits, groups of "
        f"{oneshot_variants.group_size(ctx)}, {grid})) on {data}, in {seconds:.1f} s; "
        f"{len(quantized_layers(model, mode))} layers quantized; run in Keras (no TFLite path)"
    ]
    if bug:
        notes.append(f"UNCALIBRATED: {bug}")
    return Built(
        model=model,
        size_bytes=_saved_size(ctx, model, f"keras_{mode}_int4"),
        notes=tuple(notes),
        calibration_seconds=seconds,
    )


def keras_gptq_int4(ctx):
    """Keras 3's own GPTQ int4 on the one-shot rows' windows and groups; measured in Keras.

    Example:
        >>> built = keras_gptq_int4(ctx)  # Keras 3.15.1: notes say "UNCALIBRATED"
    """
    return build_keras_native(ctx, "gptq", require_calibration=False)


def keras_awq_int4(ctx):
    """Keras 3's own AWQ int4 on the one-shot rows' windows and groups; measured in Keras.

    Example:
        >>> built = keras_awq_int4(ctx)  # Keras 3.15.1: notes say "UNCALIBRATED"
    """
    return build_keras_native(ctx, "awq", require_calibration=False)


VARIANTS = {
    "keras_gptq_int4": keras_gptq_int4,
    "keras_awq_int4": keras_awq_int4,
}
