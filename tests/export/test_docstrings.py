"""Every Example in the export docstrings runs as written (TensorFlow: export is its job)."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_llmopt.export",
    "keras_llmopt._src.export.common",
    "keras_llmopt._src.export.files",
    "keras_llmopt._src.export.onnx_export",
    "keras_llmopt._src.export.report",
    "keras_llmopt._src.export.runtime",
    "keras_llmopt._src.export.saved_model",
    "keras_llmopt._src.export.signature",
    "keras_llmopt._src.export.verification",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"
