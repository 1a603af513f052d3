"""Every Example in the quantization and clustering docstrings runs as written."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_llmopt.quantization",
    "keras_llmopt.clustering",
    "keras_llmopt._src.quantization.schemes",
    "keras_llmopt._src.quantization.layer_quantizers",
    "keras_llmopt._src.quantization.configs",
    "keras_llmopt._src.quantization.state",
    "keras_llmopt._src.quantization.quantize",
    "keras_llmopt._src.quantization.calibrate",
    "keras_llmopt._src.clustering.cluster",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"
