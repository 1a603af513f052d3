"""Every Example in the ensemble docstrings runs as written."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_llmopt.ensemble",
    "keras_llmopt._src.ensemble.distill",
    "keras_llmopt._src.ensemble.freeze",
    "keras_llmopt._src.ensemble.members",
    "keras_llmopt._src.ensemble.model",
    "keras_llmopt._src.ensemble.soup",
    "keras_llmopt._src.ensemble.strategies",
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
