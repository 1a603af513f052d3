"""Every Example in the generation docstrings runs as written (new modules included)."""

import pkgutil

import pytest

from keras_llmopt._src import generation as implementation

MODULES = [
    f"{implementation.__name__}.{info.name}"
    for info in pkgutil.iter_modules(implementation.__path__)
] + ["keras_llmopt.generation"]


def test_every_generation_module_is_listed():
    assert "keras_llmopt._src.generation.sampling" in MODULES


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
