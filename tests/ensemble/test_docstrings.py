"""Every Example in the ensemble docstrings runs as written (new modules included)."""

import pkgutil

import pytest

from keras_llmopt._src import ensemble as implementation

MODULES = ["keras_llmopt.ensemble"] + [
    f"{implementation.__name__}.{info.name}"
    for info in pkgutil.iter_modules(implementation.__path__)
]


def test_every_ensemble_module_is_listed():
    assert "keras_llmopt._src.ensemble.members" in MODULES and len(MODULES) >= 7


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, run_docstring_examples):
    run_docstring_examples(name)
