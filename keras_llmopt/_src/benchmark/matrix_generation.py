"""The model matrix's generation columns: cached decoding, generator files, LiteRT-LM.

* ``generate``: ``generation.generate`` greedy tokens against a full-recompute loop over
  the model's own forward pass (a mismatch is a silent failure);
* ``generator_<mode>``: a verified generator ``.tflite`` (prefill + decode with KV
  caches) per mode; ``int8`` from the row's QAT model with every matmul integer;
* ``litertlm``: the fp32 generator packaged as ``.litertlm`` and run in Google's
  LiteRT-LM engine, whose greedy text must equal our runner's.
"""

import keras
import numpy as np

from keras_llmopt._src.benchmark import matrix_outcomes as outcomes

CACHE_LENGTH = 16
PREFILL_LENGTHS = (4, 1)
PROMPT = np.array([[3, 1, 4, 1]], "int32")
NEW_TOKENS = 8


def full_recompute(ctx, prompt, new_tokens):
    """Greedy tokens by re-running the whole prefix per token (no cache).

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> full_recompute(RowContext(sequential_lm(), "out"), PROMPT, 2).shape
        (1, 6)
    """
    tokens = prompt
    for _ in range(new_tokens):
        values = []
        for spec in ctx.inputs.specs:
            if spec.is_tokens:
                values.append(tokens)
            elif spec.is_mask:
                values.append(np.ones_like(tokens))
            else:  # position ids (Gemma 4)
                values.append(np.arange(tokens.shape[1], dtype="int32")[None])
        logits = keras.ops.convert_to_numpy(ctx.model(ctx.inputs.pack(values), training=False))
        tokens = np.concatenate([tokens, logits[:, -1].argmax(-1)[:, None].astype("int32")], 1)
    return tokens


def generate(ctx):
    """Cached greedy decoding equals recomputing the whole prefix per token.

    Example:
        >>> from keras_llmopt._src.benchmark.matrix_cells import RowContext
        >>> from keras_llmopt._src.benchmark.matrix_models import sequential_lm
        >>> generate(RowContext(sequential_lm(), "out"))[0]
        'ok =recompute'
    """
    from keras_llmopt._src.generation.decoders import decoder_for
    from keras_llmopt._src.generation.generate import generate as cached

    produced = cached(ctx.model, PROMPT, NEW_TOKENS)
    expected = full_recompute(ctx, PROMPT, NEW_TOKENS)
    same = float(np.mean(produced == expected))
    if same < 1.0:
        raise outcomes.SilentFailure(
            "cached != recompute",
            f"generation.generate differs from the full-recompute loop: {produced.tolist()} "
            f"vs {expected.tolist()}",
        )
    return "ok =recompute", {"decoder": decoder_for(ctx.model).kind}


def _generator(ctx, mode):
    from keras_llmopt._src.export.generator import to_tflite_generator

    model = ctx.qat_model() if mode == "int8" else ctx.model
    report = to_tflite_generator(
        model,
        ctx.path(f"generator_{mode or 'fp32'}.tflite"),
        cache_length=CACHE_LENGTH,
        prefill_lengths=PREFILL_LENGTHS,
        quantization=mode,
    )
    if report.verification is None or not report.verification.passed:
        raise outcomes.SilentFailure("unverified file", "the generator file is unverified")
    counts = outcomes.matmul_inputs(report.summary)
    agreement = report.summary["generator"]["greedy_agreement"]
    if mode == "int8":
        floating = outcomes.float_matmuls(counts, "int8")
        if floating:
            raise outcomes.SilentFailure(
                f"{floating} matmuls float", f"int8 generator has float matmuls: {counts}"
            )
    figures = {"size_bytes": int(report.size_bytes), "greedy_agreement": agreement}
    figures["matmuls"] = counts
    return f"ok greedy {agreement:.2f}", figures


def generator_fp32(ctx):
    """Float32 generator file: greedy tokens identical to ``generation.generate``."""
    return _generator(ctx, None)


def generator_float16(ctx):
    """Float16-weight generator file."""
    return _generator(ctx, "float16")


def generator_dynamic_int8(ctx):
    """Dynamic-range int8 generator file."""
    return _generator(ctx, "dynamic_int8")


def generator_int8(ctx):
    """Full-integer generator file from the row's QAT model (every matmul int8)."""
    return _generator(ctx, "int8")


def generator_int4(ctx):
    """Int4-weight generator file."""
    return _generator(ctx, "int4")


def litertlm(ctx):
    """``.litertlm`` in ``litert_lm.Engine``: its greedy text equals our runner's."""
    from keras_llmopt._src.export.litertlm import to_litertlm

    report = to_litertlm(
        ctx.model,
        ctx.path("model.litertlm"),
        cache_length=CACHE_LENGTH,
        prefill_lengths=PREFILL_LENGTHS,
        verification_prompt="ab",
    )
    texts = report.summary["litertlm"]
    return "ok engine = runner", {"size_bytes": int(report.size_bytes), **texts}


CELLS = {
    "generate": generate,
    "generator_fp32": generator_fp32,
    "generator_float16": generator_float16,
    "generator_dynamic_int8": generator_dynamic_int8,
    "generator_int8": generator_int8,
    "generator_int4": generator_int4,
    "litertlm": litertlm,
}
