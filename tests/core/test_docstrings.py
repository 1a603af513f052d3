"""Every Example in the core's docstrings (and the public techniques module) runs as written."""

import pytest

MODULES = [
    "keras_llmopt.techniques",
    "keras_llmopt._src.core.hooks",
    "keras_llmopt._src.core.inline_ops",
    "keras_llmopt._src.core.keras_compat",
    "keras_llmopt._src.core.layer_state",
    "keras_llmopt._src.core.layer_tree",
    "keras_llmopt._src.core.model_copy",
    "keras_llmopt._src.core.registry",
    "keras_llmopt._src.core.saving",
    "keras_llmopt._src.core.strip",
    "keras_llmopt._src.core.targeting",
]


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
