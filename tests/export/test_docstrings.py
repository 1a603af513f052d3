"""Every Example in the export docstrings runs as written (TensorFlow: export is its job)."""

import pytest

MODULES = [
    "keras_llmopt.export",
    "keras_llmopt._src.export.broadcast_constants",
    "keras_llmopt._src.export.common",
    "keras_llmopt._src.export.converter",
    "keras_llmopt._src.export.embedding_lookup",
    "keras_llmopt._src.export.files",
    "keras_llmopt._src.export.flatbuffer_edit",
    "keras_llmopt._src.export.float_islands",
    "keras_llmopt._src.export.generator",
    "keras_llmopt._src.export.generator_runner",
    "keras_llmopt._src.export.generator_signatures",
    "keras_llmopt._src.export.float_ops",
    "keras_llmopt._src.export.graph_rewrite",
    "keras_llmopt._src.export.int4",
    "keras_llmopt._src.export.litertlm",
    "keras_llmopt._src.export.onnx_export",
    "keras_llmopt._src.export.report",
    "keras_llmopt._src.export.runtime",
    "keras_llmopt._src.export.saved_model",
    "keras_llmopt._src.export.signature",
    "keras_llmopt._src.export.signature_def",
    "keras_llmopt._src.export.signature_verification",
    "keras_llmopt._src.export.stored_weights",
    "keras_llmopt._src.export.tflite",
    "keras_llmopt._src.export.tflite_modes",
    "keras_llmopt._src.export.tflite_signatures",
    "keras_llmopt._src.export.tensor_names",
    "keras_llmopt._src.export.weight_grids",
    "keras_llmopt._src.export.window_generator",
    "keras_llmopt._src.export.verification",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
