"""Every Example in the one-shot (llm) docstrings runs as written (new modules included)."""

import pkgutil

import pytest

from keras_llmopt._src import llm as implementation

MODULES = [
    f"{implementation.__name__}.{info.name}"
    for info in pkgutil.iter_modules(implementation.__path__)
] + ["keras_llmopt.llm"]


def test_every_llm_module_is_listed():
    assert "keras_llmopt._src.llm.oneshot" in MODULES


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
