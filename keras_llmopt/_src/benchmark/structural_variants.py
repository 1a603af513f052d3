"""The benchmark's structural-pruning rows: whole heads, MLP channels or blocks removed.

Every row starts from the trained reference GPT and ships a verified fp32 ``.tflite``
of a smaller rebuilt model (``llm.prune_structures``): ``structNN`` rows remove NN % of
the *block parameters* (everything in the transformer blocks: attention, MLP, norms)
by attention heads and MLP channels, the heads first (``round(NN % * heads)``) and the
MLP width computed from the parameter counts so the total lands on NN %; ``depth1``
rows remove one whole block (ShortGPT's block influence). Importance is measured on
the first 128 training windows (``oneshot_variants.calibration_windows``).

Each setting has two rows: ``*_oneshot`` (pruned, no training) and ``*_distill300``
(then ``llm.recover`` from the dense model for ``finetune_steps`` steps, 300 on
``small``: the benchmark's ``--finetune_steps``). Their matched control is
``dense_finetune300``: the dense model trained by the same ``recover`` call with no
teacher (same windows, optimizer, steps). ``*_qat_int8`` rows quantization-aware
fine-tune a model as ``klo_qat_int8`` does (its learning rate and steps) and ship a
full-integer int8 ``.tflite``, plus an int8 generator file (prefill / decode
signatures, ``<row>_generator.tflite`` beside it) whose decode tokens/s
``generator_timing.time_generators`` measures (``scripts/benchmark_structural.py``
prints them).

The rows are opt-in (``variants.OPT_IN_VARIANTS``): not in the default benchmark nor
the demo, run by name or by ``scripts/benchmark_structural.py``. Pruned models are
built once per run (``context.shared``); distilled and QAT models are cached on disk
like every fine-tune (``context.finetuned_model``), keyed by the row's settings, so
the fp32 and QAT rows of ``struct30_distill300`` share one distillation and a second
run only exports and measures.
"""

import hashlib
import json
import math
import time

from absl import logging

from keras_llmopt._src.benchmark import generator_timing, oneshot_variants
from keras_llmopt._src.benchmark.context import _tflite

# Bump when a row below changes what it produces, so its cached models are rebuilt.
CODE_VERSION = 2
# ``llm.recover`` settings of every distillation and of the dense control. Half the loss
# on the labels: the `small` GPT is under-trained, so the labels still teach (measured
# on struct30, 300 steps: alpha 0.5 2.0799 bpb, 0.1 2.0877, 0.9 2.0842; lr 1e-3 2.141).
RECOVERY = {"batch_size": 16, "learning_rate": 3e-4, "temperature": 2.0, "alpha": 0.5}
# ``klo_qat_int8``'s QAT learning rate (``variants.qat_shared``); steps: ``finetune_steps``.
QAT_LEARNING_RATE = 1e-4
# The pruning settings, by row prefix.
SETTINGS = {
    "struct25": {"kind": "width", "fraction": 0.25, "importance": "activation"},
    "struct30": {"kind": "width", "fraction": 0.30, "importance": "activation"},
    "struct30_magnitude": {"kind": "width", "fraction": 0.30, "importance": "magnitude"},
    "struct30_ffn": {"kind": "ffn", "fraction": 0.30, "importance": "activation"},
    "struct50": {"kind": "width", "fraction": 0.50, "importance": "activation"},
    "depth1": {"kind": "depth", "num_layers": 1, "importance": "block_influence"},
}
# Rows whose QAT model is also exported as an int8 generator (decode tokens/s).
GENERATOR_ROWS = (
    "dense_finetune300_qat_int8",
    "struct30_distill300_qat_int8",
    "struct50_distill300_qat_int8",
    "depth1_distill300_qat_int8",
)


def block_parameters(model):
    """Parameters of the model's transformer blocks (attention, MLP, norms), all blocks.

    Example:
        >>> from keras_llmopt import reference
        >>> block_parameters(reference.build_gpt("small"))
        3159040
    """
    from keras_llmopt._src.llm import structural

    return sum(block.parameters for block in structural.find_structures(model).blocks)


def _head_cost(attention):
    """Parameters one query head takes from its layer (q/k/v rows, output columns)."""
    from keras_llmopt._src.llm import structures

    if attention.num_kv_heads != attention.num_heads:
        raise ValueError(
            f"structural rows: {attention.path!r} uses grouped-query attention "
            f"({attention.num_heads} query heads, {attention.num_kv_heads} key/value heads); "
            "the rows' width plan counts multi-head attention only"
        )
    projections = (attention.query, attention.key, attention.value)
    per_head = structures.parameters_of(projections) / attention.num_heads
    return per_head + math.prod(attention.output.kernel.shape) / attention.num_heads


def _channel_cost(mlp):
    """Parameters one MLP channel takes (its up / gate rows and biases, its down column)."""
    from keras_llmopt._src.llm import structures

    return (structures.parameters_of(mlp.ups) + math.prod(mlp.down.kernel.shape)) / mlp.width


def width_plan(model, fraction, heads_first=True):
    """Heads and MLP width kept so ``fraction`` of the block parameters goes.

    Heads go first: ``round(fraction * heads)`` per layer (at least one kept, and no
    more than the target allows); the MLP channels removed are the rest of the target
    divided by what one channel costs, both read from the model's parameter counts.

    Args:
        model: A reference GPT (multi-head attention, one width in every block).
        fraction: Share of the block parameters removed, in (0, 1).
        heads_first: ``False`` removes MLP channels only.

    Returns:
        Dict ``num_heads`` and ``intermediate_dim`` (kept per layer), ``heads`` and
        ``width`` (before), and ``fraction`` (the block-parameter share the plan removes).

    Example:
        >>> from keras_llmopt import reference
        >>> plan = width_plan(reference.build_gpt("small"), 0.30)
        >>> plan["num_heads"], plan["intermediate_dim"], round(plan["fraction"], 4)
        (3, 690, 0.3002)
        >>> plan = width_plan(reference.build_gpt("small"), 0.50)
        >>> plan["num_heads"], plan["intermediate_dim"]
        (2, 511)
        >>> width_plan(reference.build_gpt("small"), 0.30, heads_first=False)["intermediate_dim"]
        562
    """
    from keras_llmopt._src.llm import structural

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"width_plan: `fraction` must be in (0, 1). Received: {fraction!r}")
    found = structural.find_structures(model)
    heads = {a.num_heads for a in found.attention}
    widths = {m.width for m in found.mlps}
    if len(heads) != 1 or len(widths) != 1:
        raise ValueError(
            f"width_plan: {model.name!r} must have one head count and one MLP width in every "
            f"block. Received: heads {sorted(heads)}, widths {sorted(widths)}"
        )
    (num_heads,), (width,) = heads, widths
    total = sum(block.parameters for block in found.blocks)
    target = fraction * total
    head_cost = sum(_head_cost(a) for a in found.attention)
    channel_cost = sum(_channel_cost(m) for m in found.mlps)
    removed_heads = min(math.floor(fraction * num_heads + 0.5), num_heads - 1) * heads_first
    while removed_heads and removed_heads * head_cost > target:
        removed_heads -= 1
    channels = round((target - removed_heads * head_cost) / channel_cost)
    channels = min(max(channels, 0), width - 1)
    removed = removed_heads * head_cost + channels * channel_cost
    return {
        "heads": num_heads,
        "num_heads": num_heads - removed_heads,
        "width": width,
        "intermediate_dim": width - channels,
        "fraction": removed / total,
    }


def structural_configs(model, settings):
    """The structural configs of one row setting (``SETTINGS`` values), applied in order.

    Example:
        >>> from keras_llmopt import reference
        >>> [c.describe() for c in structural_configs(reference.build_gpt("small"),
        ...                                           SETTINGS["struct30"])]
        ['head_pruning to 3 by activation', 'ffn_pruning to 690 by activation']
    """
    from keras_llmopt._src.llm import structural_configs as configs

    importance = settings["importance"]
    if settings["kind"] == "depth":
        return [configs.DepthPruning(settings["num_layers"], importance=importance)]
    plan = width_plan(model, settings["fraction"], heads_first=settings["kind"] == "width")
    found = []
    if plan["num_heads"] < plan["heads"]:
        found.append(configs.HeadPruning(num_heads=plan["num_heads"], importance=importance))
    if plan["intermediate_dim"] < plan["width"]:
        found.append(
            configs.FFNPruning(intermediate_dim=plan["intermediate_dim"], importance=importance)
        )
    return found


def describe_removal(model, reference_model):
    """What ``model`` lacks against ``reference_model``: heads, MLP width, blocks, in words.

    Read from both models' structures (so a pruned model loaded from the cache says it
    too), with the block-parameter and whole-model shares removed.

    Example:
        >>> from keras_llmopt import llm, reference
        >>> dense = reference.build_gpt("tiny")
        >>> smaller = llm.prune_ffn(dense, None, intermediate_dim=128, importance="magnitude")
        >>> print(describe_removal(smaller, dense))
        MLP 256->128 in every block: 33.0 % of block parameters removed
        (99,968 -> 66,944), 24.1 % of all parameters
    """
    from keras_llmopt._src.llm import structural

    before, after = structural.find_structures(reference_model), structural.find_structures(model)
    parts = []
    heads = sorted({a.num_heads for a in after.attention})
    ref_heads = sorted({a.num_heads for a in before.attention})
    if heads != ref_heads:
        parts.append(f"heads {'/'.join(map(str, ref_heads))}->{'/'.join(map(str, heads))}")
    widths = sorted({m.width for m in after.mlps})
    ref_widths = sorted({m.width for m in before.mlps})
    if widths != ref_widths:
        parts.append(f"MLP {'/'.join(map(str, ref_widths))}->{'/'.join(map(str, widths))}")
    text = (" and ".join(parts) + " in every block") if parts else ""
    kept = {b.path for b in after.blocks}
    gone = [b.path for b in before.blocks if b.path not in kept]
    if len(after.blocks) != len(before.blocks):
        where = f" ({', '.join(gone)})" if gone else ""
        blocks = f"{len(before.blocks) - len(after.blocks)} of {len(before.blocks)} blocks{where}"
        text = f"{text}; {blocks}" if text else f"removed {blocks}"
    ref_total = sum(b.parameters for b in before.blocks)
    total = sum(b.parameters for b in after.blocks)
    share = 1.0 - model.count_params() / reference_model.count_params()
    return (
        f"{text or 'nothing removed'}: {1.0 - total / ref_total:.1%} of block parameters "
        f"removed ({ref_total:,} -> {total:,}), {share:.1%} of all parameters"
    ).replace("%", " %")


def _settings_key(key, settings, **extra):
    """A short hash of the settings a cached model of row ``key`` depends on.

    The reference model, steps, seed and corpus are in the context's own cache key.
    """
    text = json.dumps(
        {
            "key": key,
            "settings": settings,
            "calibration_windows": oneshot_variants.CALIBRATION_WINDOWS,
            "recovery": RECOVERY,
            "code": CODE_VERSION,
            **extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _pruned(ctx, key):
    """Row ``key``'s one-shot pruned model, built once per run (``seconds`` attached)."""

    def build():
        from keras_llmopt._src.llm import structural

        start = time.perf_counter()
        calibration = oneshot_variants.calibration_windows(ctx)
        model = ctx.model
        for config in structural_configs(ctx.model, SETTINGS[key]):
            logging.info("benchmark: %s: %s", key, config.describe())
            model = structural.prune_structures(
                model, calibration, config, num_samples=len(calibration)
            )
        return model, time.perf_counter() - start

    return ctx.shared(f"structural:{key}", build)


def _recovery_data(ctx):
    """``(x, y)``: the training windows every distillation and the dense control see."""
    from keras_llmopt._src.reference.training import make_batches

    return make_batches(ctx.corpus.train, RECOVERY["batch_size"], ctx.finetune_steps, ctx.seed)


def _recover(ctx, student, teacher):
    from keras_llmopt._src.ensemble.recovery import recover

    return recover(
        student,
        teacher,
        _recovery_data(ctx),
        ctx.finetune_steps,
        seed=ctx.seed,
        verbose=ctx.verbose,
        **RECOVERY,
    )


def _distilled(ctx, key):
    """Row ``key``'s pruned model distilled from the dense one (cached fine-tune)."""

    def build():
        from keras_llmopt._src.core.model_copy import copy_model

        pruned, _ = _pruned(ctx, key)
        student = copy_model(pruned, "the structural distillation", compiled=False)
        logging.info("benchmark: %s: distilling %d steps", key, ctx.finetune_steps)
        return _recover(ctx, student, ctx.model)

    name = f"structural_{key}_distill-{_settings_key(key, SETTINGS[key])}"
    return ctx.finetuned_model(name, build, RECOVERY["learning_rate"])


def _dense_finetuned(ctx):
    """The dense model trained by the same ``recover`` call, no teacher (cached)."""

    def build():
        from keras_llmopt._src.core.model_copy import copy_model

        dense = copy_model(ctx.model, "the dense fine-tune", compiled=False)
        logging.info("benchmark: dense recover fine-tune (control), %d steps", ctx.finetune_steps)
        return _recover(ctx, dense, None)

    name = f"structural_dense_finetune-{_settings_key('dense', None)}"
    return ctx.finetuned_model(name, build, RECOVERY["learning_rate"])


def _qat(ctx, key, source):
    """``source()`` quantization-aware fine-tuned as ``klo_qat_int8`` is (cached)."""

    def build():
        from keras_llmopt._src.quantization import quantize

        qat = quantize.quantize_model(source())
        logging.info("benchmark: %s: QAT fine-tune, %d steps", key, ctx.finetune_steps)
        ctx.train(qat, QAT_LEARNING_RATE)
        return qat

    name = f"structural_{key}_qat-{_settings_key(key, SETTINGS.get(key), qat=QAT_LEARNING_RATE)}"
    return ctx.finetuned_model(name, build, QAT_LEARNING_RATE)


def _steps_note(ctx, teacher):
    how = "distilled from the dense model" if teacher else "fine-tuned (no teacher)"
    return (
        f"{how} for {ctx.finetune_steps} steps (llm.recover: batch "
        f"{RECOVERY['batch_size']}, AdamW {RECOVERY['learning_rate']:g}"
        + (f", T {RECOVERY['temperature']:g}, alpha {RECOVERY['alpha']:g}" if teacher else "")
        + ")"
    )


def _how_pruned(key):
    settings = SETTINGS[key]
    windows = oneshot_variants.CALIBRATION_WINDOWS
    data = "weights only" if settings["importance"] == "magnitude" else f"{windows} windows"
    return f"{settings['importance']} importance ({data})"


def _oneshot_row(key):
    def build(ctx):
        model, seconds = _pruned(ctx, key)
        built = _tflite(ctx, model, f"{key}_oneshot")
        built.notes = (
            f"{describe_removal(model, ctx.model)}; {_how_pruned(key)}; one-shot, no training",
            *built.notes,
        )
        built.calibration_seconds = seconds
        return built

    build.__name__ = f"{key}_oneshot"
    build.__doc__ = (
        f"``{key}`` ({_describe_settings(key)}), one-shot: pruned, rebuilt, fp32 ``.tflite``.\n\n"
        f"    Example:\n        >>> built = {key}_oneshot(ctx)  # doctest: +SKIP\n"
    )
    return build


def _distill_row(key):
    def build(ctx):
        model = _distilled(ctx, key)
        built = _tflite(ctx, model, f"{key}_distill300")
        built.notes = (
            f"{describe_removal(model, ctx.model)}; {_how_pruned(key)}; then "
            + _steps_note(ctx, True),
            *built.notes,
        )
        built.finetuned = True
        return built

    build.__name__ = f"{key}_distill300"
    build.__doc__ = (
        f"``{key}`` ({_describe_settings(key)}), distilled from the dense model; fp32 "
        f"``.tflite``.\n\n    Example:\n        >>> built = {key}_distill300(ctx)  "
        "# doctest: +SKIP\n"
    )
    return build


def _describe_settings(key):
    settings = SETTINGS[key]
    if settings["kind"] == "depth":
        return f"{settings['num_layers']} block(s) removed by {settings['importance']}"
    if settings["kind"] == "ffn":
        return (
            f"{settings['fraction']:.0%} of block parameters by MLP channels only, "
            + (settings["importance"])
        )
    return (
        f"{settings['fraction']:.0%} of block parameters by heads + MLP, {settings['importance']}"
    )


def dense_finetune300(ctx):
    """The matched control of the distilled rows: the dense model, same ``recover`` call.

    Same windows, optimizer and steps as every ``*_distill300`` row, with no teacher;
    fp32 ``.tflite``.

    Example:
        >>> built = dense_finetune300(ctx)  # doctest: +SKIP
    """
    built = _tflite(ctx, _dense_finetuned(ctx), "dense_finetune300")
    built.notes = (_dense_what(ctx), *built.notes)
    built.finetuned = True
    return built


def _qat_row(name, key, source, what):
    def build(ctx):
        qat = _qat(ctx, key, lambda: source(ctx))
        built = _tflite(ctx, qat, name, quantization="int8")
        notes = [
            f"{what(ctx)}; then quantization-aware fine-tuned {ctx.finetune_steps} steps "
            f"(as klo_qat_int8: AdamW {QAT_LEARNING_RATE:g}), full-integer int8"
        ]
        if name in GENERATOR_ROWS:
            notes.append(generator_timing.export_int8_generator(ctx, qat, name))
        built.notes = (*notes, *built.notes)
        built.finetuned = True
        return built

    build.__name__ = name
    return build


def _dense_what(ctx):
    return f"dense, nothing removed; {_steps_note(ctx, False)}"


def _distilled_what(key):
    def what(ctx):
        removal = describe_removal(_distilled(ctx, key), ctx.model)
        return f"{removal}; {_how_pruned(key)}; then {_steps_note(ctx, True)}"

    return what


def _distilled_qat_row(key):
    name = f"{key}_distill300_qat_int8"
    build = _qat_row(name, key, lambda ctx: _distilled(ctx, key), _distilled_what(key))
    build.__doc__ = (
        f"``{key}_distill300`` QAT fine-tuned, full-integer int8, and its int8 generator.\n\n"
        f"    Starts from the same cached distillation as ``{key}_distill300``.\n\n"
        f"    Example:\n        >>> built = {name}(ctx)  # doctest: +SKIP\n"
    )
    return build


dense_finetune300_qat_int8 = _qat_row(
    "dense_finetune300_qat_int8", "dense_finetune300", _dense_finetuned, _dense_what
)
dense_finetune300_qat_int8.__doc__ = """``dense_finetune300`` QAT fine-tuned, full-integer int8.

    The control of the ``*_distill300_qat_int8`` rows; also exported as an int8 generator.

    Example:
        >>> built = dense_finetune300_qat_int8(ctx)  # doctest: +SKIP
    """
# The keys whose distilled model is also QAT fine-tuned to int8 (with its generator).
QAT_KEYS = ("struct30", "struct50", "depth1")


def _rows():
    rows = {"dense_finetune300": dense_finetune300}
    for key in SETTINGS:
        rows[f"{key}_oneshot"] = _oneshot_row(key)
        rows[f"{key}_distill300"] = _distill_row(key)
    rows["dense_finetune300_qat_int8"] = dense_finetune300_qat_int8
    for key in QAT_KEYS:
        rows[f"{key}_distill300_qat_int8"] = _distilled_qat_row(key)
    return rows


# name -> builder; the order is the table's order.
VARIANTS = _rows()
# keras_llmopt's own rows (drawn as such in the plot); the dense control is an anchor.
OURS = frozenset(name for name in VARIANTS if name != "dense_finetune300")
