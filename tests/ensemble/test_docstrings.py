"""Every Example in the ensemble docstrings runs as written."""

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
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
