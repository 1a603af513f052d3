"""Every Example in the quantization and clustering docstrings runs as written."""

import pytest

MODULES = [
    "keras_llmopt.quantization",
    "keras_llmopt.clustering",
    "keras_llmopt._src.quantization.schemes",
    "keras_llmopt._src.quantization.layer_quantizers",
    "keras_llmopt._src.quantization.configs",
    "keras_llmopt._src.quantization.config_base",
    "keras_llmopt._src.quantization.consumer_inputs",
    "keras_llmopt._src.quantization.attention_prep",
    "keras_llmopt._src.quantization.state",
    "keras_llmopt._src.quantization.quantize",
    "keras_llmopt._src.quantization.calibrate",
    "keras_llmopt._src.clustering.cluster",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
