"""Every Example in the sparsity docstrings runs as written."""

import pytest

MODULES = [
    "keras_llmopt.sparsity",
    "keras_llmopt._src.sparsity.callbacks",
    "keras_llmopt._src.sparsity.inplace",
    "keras_llmopt._src.sparsity.masks",
    "keras_llmopt._src.sparsity.policy",
    "keras_llmopt._src.sparsity.prune",
    "keras_llmopt._src.sparsity.report",
    "keras_llmopt._src.sparsity.schedules",
    "keras_llmopt._src.sparsity.state",
    "keras_llmopt._src.sparsity.strip",
    "keras_llmopt._src.sparsity.technique",
    "keras_llmopt._src.sparsity.units",
    "keras_llmopt._src.sparsity.wrapper",
]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
