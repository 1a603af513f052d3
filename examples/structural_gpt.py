"""Structural pruning of the reference GPT: fewer heads and MLP channels, distilled, then int8.

Removes ``--fraction`` (30 %) of the block parameters (everything inside the
transformer blocks) by whole attention heads and MLP channels, chosen by their
activations on calibration windows of the reference corpus, so the model is rebuilt
smaller (``llm.prune_heads``, ``llm.prune_ffn``). It then distills the pruned model
from the dense one for ``--steps`` steps (``llm.recover``), fine-tunes it
quantization-aware (``quantization.quantize_model``) and writes a full-integer int8
``.tflite`` (``export.to_tflite(..., quantization="int8")``). The table compares file
sizes and bits per byte with the dense model, and with the matched control (the dense
model trained the same steps by the same ``llm.recover`` call, no teacher: a short
fine-tune alone moves bits per byte, most on the under-trained ``tiny`` GPT).

    python examples/structural_gpt.py                    # tiny GPT, about a minute
    python examples/structural_gpt.py --preset=small --out_dir=/tmp/structural

How the 30 % is split: one head in four goes (``round(fraction * heads)``), and the
MLP width is computed from the parameter counts so heads + channels come to the
target (on ``small``: 4 -> 3 heads and 1024 -> 690 channels per block).
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_llmopt import export, llm, quantization, reference  # noqa: E402

_PRESET = flags.DEFINE_enum("preset", "tiny", ["tiny", "small"], "Reference GPT preset.")
_FRACTION = flags.DEFINE_float("fraction", 0.30, "Share of the block parameters removed.")
_IMPORTANCE = flags.DEFINE_enum(
    "importance", "activation", ["activation", "taylor", "magnitude"], "How heads are scored."
)
_SAMPLES = flags.DEFINE_integer("num_samples", 128, "Calibration windows (importance).")
_STEPS = flags.DEFINE_integer("steps", 300, "Distillation steps from the dense model.")
_CONTROL = flags.DEFINE_bool(
    "control", True, "Also train the dense model the same steps (the matched control)."
)
_QAT_STEPS = flags.DEFINE_integer("qat_steps", 300, "Quantization-aware fine-tuning steps.")
_WINDOWS = flags.DEFINE_integer("windows", 64, "Validation windows for bits per byte.")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/keras_llmopt_structural", "Where files go.")


def plan(model, fraction):
    """``(heads kept, MLP width kept, share of block parameters removed)`` for ``fraction``."""
    found = llm.find_structures(model)
    blocks = sum(block.parameters for block in found.blocks)
    heads, width = found.attention[0].num_heads, found.mlps[0].width
    # What one head and one channel cost over all blocks (q/k/v rows + output columns;
    # up rows and biases + down columns).
    head = sum(
        (
            sum(p.count_params() for p in (a.query, a.key, a.value))
            + math.prod(a.output.kernel.shape)
        )
        / a.num_heads
        for a in found.attention
    )
    channel = sum(
        (sum(u.count_params() for u in m.ups) + math.prod(m.down.kernel.shape)) / m.width
        for m in found.mlps
    )
    target = fraction * blocks
    removed_heads = min(math.floor(fraction * heads + 0.5), heads - 1)
    while removed_heads and removed_heads * head > target:
        removed_heads -= 1
    channels = min(max(round((target - removed_heads * head) / channel), 0), width - 1)
    removed = (removed_heads * head + channels * channel) / blocks
    return heads - removed_heads, width - channels, removed


def block_parameters(model):
    return sum(block.parameters for block in llm.find_structures(model).blocks)


def main(argv):
    del argv
    out = _OUT_DIR.value
    os.makedirs(out, exist_ok=True)
    config = reference.GPTConfig.preset(_PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    model = reference.trained_model(_PRESET.value, corpus=corpus)
    calibration = corpus.train[: _SAMPLES.value, :-1].astype("int32")
    windows = reference.evaluation_windows(corpus, _WINDOWS.value).astype(np.int32)
    data = (windows[:, :-1], windows[:, 1:])

    def bpb(model_or_path):
        return reference.evaluate(model_or_path, corpus, num_windows=_WINDOWS.value).bpb

    # 1. One-shot: heads, then MLP channels (scored on the head-pruned model).
    num_heads, width, share = plan(model, _FRACTION.value)
    kwargs = {"importance": _IMPORTANCE.value, "num_samples": _SAMPLES.value}
    pruned = model
    if num_heads < config.num_heads:
        pruned = llm.prune_heads(pruned, calibration, num_heads=num_heads, **kwargs)
    if width < config.mlp_dim:
        pruned = llm.prune_ffn(pruned, calibration, intermediate_dim=width, **kwargs)
    before, after = block_parameters(model), block_parameters(pruned)
    print(
        f"\n{model.name}: heads {config.num_heads} -> {num_heads}, MLP {config.mlp_dim} -> "
        f"{width}: block parameters {before:,} -> {after:,} ({1 - after / before:.1%} removed; "
        f"planned {share:.1%}), all parameters {model.count_params():,} -> "
        f"{pruned.count_params():,}"
    )
    dense_bpb, oneshot_bpb = bpb(model), bpb(pruned)

    # 2. Distillation from the dense model (in place), on fresh training windows.
    x, y = reference.make_batches(corpus.train, 16, _STEPS.value, seed=0)
    llm.recover(pruned, model, (x, y), _STEPS.value)
    control_bpb = None
    if _CONTROL.value:  # a short fine-tune alone can move bpb: the same steps, no pruning
        control = keras.models.clone_model(model)
        control.set_weights(model.get_weights())
        control_bpb = bpb(llm.recover(control, None, (x, y), _STEPS.value))

    # 3. Quantization-aware fine-tune of the distilled model, then full-integer int8.
    qat = quantization.quantize_model(pruned)
    quantization.calibrate(qat, calibration, method="minmax", num_batches=8)
    reference.train(qat, corpus, _QAT_STEPS.value, learning_rate=1e-4, seed=1)

    def tflite(name, m, mode=None):
        path = os.path.join(out, f"{model.name}_{name}.tflite")
        return export.to_tflite(m, path, quantization=mode, verification_data=data)

    reports = {
        "dense fp32": tflite("dense_fp32", model),
        "pruned + distilled fp32": tflite("structural_fp32", pruned),
        "pruned + distilled + QAT int8": tflite("structural_qat_int8", qat, "int8"),
    }
    base = reports["dense fp32"].size_bytes
    print(f"\n{'model':<32}{'size_KiB':>10}{'size_x':>8}{'bpb':>8}{'d_bpb':>9}")
    print(f"{'dense (Keras)':<32}{'-':>10}{'-':>8}{dense_bpb:>8.4f}{0:>+9.4f}")
    print(f"{'pruned one-shot (Keras)':<32}{'-':>10}{'-':>8}{oneshot_bpb:>8.4f}", end="")
    print(f"{oneshot_bpb - dense_bpb:>+9.4f}")
    if control_bpb is not None:
        name = f"dense + {_STEPS.value} steps (control)"
        print(f"{name:<32}{'-':>10}{'-':>8}{control_bpb:>8.4f}{control_bpb - dense_bpb:>+9.4f}")
    for name, report in reports.items():
        value = bpb(report.path)
        print(
            f"{name:<32}{report.size_bytes / 1024:>10.1f}{report.size_bytes / base:>8.3f}"
            f"{value:>8.4f}{value - dense_bpb:>+9.4f}"
        )
    print(f"\nwrote {', '.join(r.path for r in reports.values())}")


if __name__ == "__main__":
    app.run(main)
