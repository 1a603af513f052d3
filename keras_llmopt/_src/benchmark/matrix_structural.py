"""The model matrix's structural columns: heads, MLP channels and blocks removed.

Each cell prunes the row's model with one structural config on 16 calibration rows
and checks what structural pruning claims:

* the model shrinks: fewer parameters, by what the report says was removed;
* it comes back as its own class (a KerasHub CausalLM rebuilt from a smaller config)
  and reloads from ``.keras`` with the same outputs;
* it generates: cached greedy decoding equals full recomputation;
* its verified fp32 ``.tflite`` is smaller than the row's fp32 file.

``struct_heads`` removes half the heads (whole GQA groups where the grouping allows),
``struct_ffn`` half of every MLP's channels, ``struct_depth`` one block. A family
whose config cannot express the change (no ``head_dim`` argument, fused QKV, experts)
raises a ``ValueError``: the cell is ``refused``.
"""

import keras
import numpy as np

from keras_llmopt._src.benchmark import matrix_checks as checks
from keras_llmopt._src.benchmark import matrix_generation
from keras_llmopt._src.benchmark import matrix_outcomes as outcomes

CALIBRATION_ROWS = 16


def _check_reload(ctx, model, name):
    path = ctx.path(f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, custom_objects={type(model).__name__: type(model)})
    if type(loaded) is not type(model):
        raise outcomes.SilentFailure(
            "class changed", f"reloads as {type(loaded).__name__}, not {type(model).__name__}"
        )
    x = ctx.sample(2, seed=3)
    before = keras.ops.convert_to_numpy(model(x, training=False))
    after = keras.ops.convert_to_numpy(loaded(x, training=False))
    worst = float(np.max(np.abs(before - after)))
    if worst > 1e-5 * max(1.0, float(np.max(np.abs(before)))):
        raise outcomes.SilentFailure("reload differs", f"outputs change on reload by {worst:.3g}")


def _check_generates(ctx):
    """Cached greedy decoding equals recomputation (by recomputation alone without a KV cache).

    A model whose cache is hybrid or recurrent state has no KV-cache decoder here.
    """
    from keras_llmopt._src.generation.cached_attention import CachedDecodingError

    try:
        matrix_generation.generate(ctx)
        return
    except CachedDecodingError:
        pass
    prompt, count = matrix_generation.PROMPT, matrix_generation.NEW_TOKENS
    tokens = matrix_generation.full_recompute(ctx, prompt, count)
    vocab = ctx.inputs.vocabulary_size or 256
    if tokens.shape != (1, prompt.shape[1] + count) or not np.all((0 <= tokens) & (tokens < vocab)):
        raise outcomes.SilentFailure("no generation", f"greedy tokens {tokens.tolist()}")


def _structural(ctx, config, name):
    """Prunes the row's model with ``config`` and checks the result (see module docs)."""
    from keras_llmopt._src.llm.structural import prune_structures

    pruned = prune_structures(
        ctx.model, ctx.sample(CALIBRATION_ROWS, seed=6), config, num_samples=CALIBRATION_ROWS
    )
    report = pruned.structural_report
    before, after = int(ctx.model.count_params()), int(pruned.count_params())
    if after >= before or report.parameters_after != after:
        raise outcomes.SilentFailure(
            "did not shrink", f"{before:,} -> {after:,} parameters (report: {report})"
        )
    if type(pruned) is not type(ctx.model):
        raise outcomes.SilentFailure(
            "class changed", f"{type(ctx.model).__name__} came back as {type(pruned).__name__}"
        )
    _check_reload(ctx, pruned, name)
    pruned_ctx = type(ctx)(pruned, ctx.path(name), ctx.sequence_length)  # a RowContext
    _check_generates(pruned_ctx)
    tflite = pruned_ctx.to_tflite(pruned, name)
    checks.check_verified(tflite, f"to_tflite of the {name} model")
    size_ratio = tflite.size_bytes / ctx.fp32_size()
    if size_ratio >= 1.0:
        raise outcomes.SilentFailure(
            "file not smaller", f"the pruned fp32 file is {size_ratio:.3f}x the row's"
        )
    figures = {
        "parameters_ratio": after / before,
        "size_ratio": size_ratio,
        "size_bytes": tflite.size_bytes,
    }
    return f"ok {after / before:.2f}x params", figures


def struct_heads(ctx):
    """Half the attention heads removed (activation importance); shrinks, reloads, generates.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import reference_gpt
        >>> struct_heads(RowContext(reference_gpt(), "out"))[0]
        'ok 0.88x params'
    """
    from keras_llmopt._src.llm.structural_configs import HeadPruning

    return _structural(ctx, HeadPruning(fraction=0.5), "struct_heads")


def struct_ffn(ctx):
    """Half of every MLP's channels removed (activation importance).

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> struct_ffn(RowContext(sequential_lm(), "out"))[0].startswith("ok")
        True
    """
    from keras_llmopt._src.llm.structural_configs import FFNPruning

    return _structural(ctx, FFNPruning(fraction=0.5), "struct_ffn")


def struct_depth(ctx):
    """One block removed (block influence).

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import reference_gpt
        >>> struct_depth(RowContext(reference_gpt(), "out"))[0]
        'ok 0.64x params'
    """
    from keras_llmopt._src.llm.structural_configs import DepthPruning

    return _structural(ctx, DepthPruning(num_layers=1), "struct_depth")


CELLS = {"struct_heads": struct_heads, "struct_ffn": struct_ffn, "struct_depth": struct_depth}
