"""Every Example in the sparsity and core docstrings runs as written."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_llmopt.sparsity",
    "keras_llmopt._src.core.layer_tree",
    "keras_llmopt._src.core.targeting",
    "keras_llmopt._src.sparsity.callbacks",
    "keras_llmopt._src.sparsity.inplace",
    "keras_llmopt._src.sparsity.masks",
    "keras_llmopt._src.sparsity.policy",
    "keras_llmopt._src.sparsity.prune",
    "keras_llmopt._src.sparsity.report",
    "keras_llmopt._src.sparsity.schedules",
    "keras_llmopt._src.sparsity.state",
    "keras_llmopt._src.sparsity.strip",
    "keras_llmopt._src.sparsity.units",
    "keras_llmopt._src.sparsity.wrapper",
]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
    )
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"
