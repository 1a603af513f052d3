"""Side-by-side variants of the reference GPT: size, bits per byte and latency, one run.

Rows: the converter's own TFLite paths, Keras 3 native int8/int4, ONNX Runtime, AI Edge
Quantizer, tfmot on a tf_keras twin, and keras_llmopt's pruning / QAT / clustering; a
variant that fails keeps its row with the error.

Example:
    >>> from keras_llmopt import benchmark, reference
    >>> corpus = reference.load_corpus(64)
    >>> model = reference.trained_model("tiny", corpus=corpus)
    >>> result = benchmark.run_benchmark(
    ...     model, corpus, "bench", variants=["tflite_dynamic_int8", "onnx_dynamic_int8"])
    >>> result.row("tflite_dynamic_int8")["size_ratio"]
    >>> benchmark.write_report(result, "report")["markdown"]
    'report/report.md'
"""

from keras_llmopt._src.benchmark.environment import machine_info, package_versions
from keras_llmopt._src.benchmark.measure import interleaved_step_times
from keras_llmopt._src.benchmark.report import ROW_FIELDS, pareto_front, write_report
from keras_llmopt._src.benchmark.run import DEFAULT_VARIANTS, BenchmarkResult, run_benchmark
from keras_llmopt._src.benchmark.variants import VARIANTS

__all__ = [
    "DEFAULT_VARIANTS",
    "ROW_FIELDS",
    "VARIANTS",
    "BenchmarkResult",
    "interleaved_step_times",
    "machine_info",
    "package_versions",
    "pareto_front",
    "run_benchmark",
    "write_report",
]
