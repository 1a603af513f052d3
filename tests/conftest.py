"""Shared pytest fixtures.

Every test session gets its own cache folder, so the corpus and trained models
are built from nothing exactly as on a new machine, and the user's own cache is
never touched.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

RUNNING_ON_JAX = keras.backend.backend() == "jax"


def pytest_collection_modifyitems(config, items):
    """On JAX, keep only the tests marked ``backend_agnostic``."""
    if not RUNNING_ON_JAX:
        return
    kept, dropped = [], []
    for item in items:
        (kept if item.get_closest_marker("backend_agnostic") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Points the package cache at a fresh folder for the whole session."""
    cache = tmp_path_factory.mktemp("keras_llmopt_cache")
    previous = os.environ.get("KERAS_LLMOPT_CACHE")
    os.environ["KERAS_LLMOPT_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("KERAS_LLMOPT_CACHE", None)
    else:
        os.environ["KERAS_LLMOPT_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_corpus():
    """The byte corpus cut into windows for the ``tiny`` preset."""
    from keras_llmopt import reference

    return reference.load_corpus(reference.GPTConfig.preset("tiny").sequence_length)


@pytest.fixture(scope="session")
def trained_tiny(tiny_corpus):
    """A ``tiny`` reference GPT trained briefly (shared, do not mutate: copy it)."""
    from keras_llmopt import reference

    return reference.trained_model("tiny", corpus=tiny_corpus, verbose=0)


@pytest.fixture
def fresh_tiny():
    """An untrained ``tiny`` reference GPT with fixed seed."""
    from keras_llmopt import reference

    keras.utils.set_random_seed(0)
    return reference.build_gpt("tiny")


@pytest.fixture
def run_docstring_examples(tmp_path, monkeypatch):
    """``fn(module_name)``: runs a module's docstring examples in ``tmp_path``; none may fail."""
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)

    def run(name):
        module = importlib.import_module(name)
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True
        )
        assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"

    return run


@pytest.fixture
def tiny_gpt2_lm():
    """Builds a small KerasHub GPT-2 CausalLM from a config (skips without keras_hub)."""
    keras_hub = pytest.importorskip("keras_hub")

    def build(num_layers=2):
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=256,
            num_layers=num_layers,
            num_heads=2,
            hidden_dim=32,
            intermediate_dim=64,
            max_sequence_length=32,
        )
        return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)

    return build


@pytest.fixture(scope="session")
def tiny_llama_lm():
    """Builds a small KerasHub Llama CausalLM (GQA) from a config (skips without keras_hub)."""
    keras_hub = pytest.importorskip("keras_hub")

    def build():
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=256,
            num_layers=2,
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=32,
            intermediate_dim=64,
        )
        return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)

    return build
