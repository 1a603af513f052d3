"""What the XNNPACK fallback ops cost in a full-integer int8 file, and what the fix saves.

Exports one reference GPT (random weights: latency depends on shapes, not values) as
fp32, dynamic int8 and full-integer int8 three ways: every op integer
(``integer_only=True``: int8 SOFTMAX and GELU run on LiteRT's builtin kernels, outside
XNNPACK), only SOFTMAX computed in float32 inside XNNPACK, and the default (SOFTMAX and
GELU in float32, ``export/float_islands.py``). All files are timed together in
interleaved rounds at 1 thread; the table gives medians, spreads and ratios to fp32 and
to dynamic int8, and each file's XNNPACK fallback ops. Untrained logits are near ties,
so the files are not verified here (``tests/export/test_float_islands.py`` checks that
both int8 forms agree); the demo's ``klo_qat_int8`` row is the trained one.

    python scripts/benchmark_int8_latency.py --preset=small --rounds=40
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset.")
ROUNDS = flags.DEFINE_integer("rounds", 40, "Interleaved timing rounds.")
THREADS = flags.DEFINE_integer("threads", 1, "LiteRT threads.")


def _exports(folder):
    from keras_llmopt import export, quantization, reference
    from keras_llmopt._src.export import float_islands

    model = reference.build_gpt(PRESET.value, seed=0)
    length = reference.GPTConfig.preset(PRESET.value).sequence_length
    tokens = np.random.default_rng(0).integers(0, 256, (16, length)).astype("int32")
    q = quantization.quantize_model(model)
    quantization.calibrate(q, tokens)
    paths = {name: os.path.join(folder, f"{name}.tflite") for name in _VARIANTS}
    export.to_tflite(model, paths["fp32"], verify=False)
    export.to_tflite(model, paths["dynamic_int8"], quantization="dynamic_int8", verify=False)
    export.to_tflite(
        q, paths["int8_integer_only"], quantization="int8", integer_only=True, verify=False
    )
    export.to_tflite(q, paths["int8"], quantization="int8", verify=False)
    with open(paths["int8_integer_only"], "rb") as handle:
        content, _ = float_islands.run_in_float(handle.read(), ops=("SOFTMAX",))
    with open(paths["int8_softmax_float"], "wb") as handle:
        handle.write(content)
    return paths


_VARIANTS = ("fp32", "dynamic_int8", "int8_integer_only", "int8_softmax_float", "int8")


def main(argv):
    del argv
    from keras_llmopt._src.benchmark import measure
    from keras_llmopt._src.export import report
    from keras_llmopt._src.export.runtime import load_runner

    with tempfile.TemporaryDirectory() as folder:
        paths = _exports(folder)
        functions = {}
        for name, path in paths.items():
            runner = load_runner(path, num_threads=THREADS.value)
            feeds = runner.example_inputs()
            functions[name] = lambda runner=runner, feeds=feeds: runner._run_batch(feeds)
        logging.info("timing %d files in %d interleaved rounds", len(paths), ROUNDS.value)
        stats = measure.interleaved_latencies(functions, rounds=ROUNDS.value)
        fallbacks = {n: report.xnnpack_fallback_ops(p) for n, p in paths.items()}
    fp32, dynamic = stats["fp32"]["median"], stats["dynamic_int8"]["median"]
    print(f"{'file':<20} {'ms':>7} {'iqr%':>6} {'x fp32':>7} {'x dyn int8':>10}  fallback ops")
    for name in _VARIANTS:
        ms = stats[name]["median"]
        ops = ", ".join(f"{op} x{n}" for op, n in fallbacks[name].items()) or "-"
        print(
            f"{name:<20} {ms:7.3f} {stats[name]['iqr_pct']:6.1f} {ms / fp32:7.3f} "
            f"{ms / dynamic:10.3f}  {ops}"
        )


if __name__ == "__main__":
    app.run(main)
