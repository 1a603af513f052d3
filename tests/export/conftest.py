import numpy as np
import pytest


@pytest.fixture(scope="module")
def windows(tiny_corpus):
    from keras_llmopt import reference

    return reference.evaluation_windows(tiny_corpus, 16).astype(np.int32)


def make_untrained_tiny(**overrides):
    import keras

    from keras_llmopt import reference

    keras.utils.set_random_seed(0)
    if not overrides:
        return reference.build_gpt("tiny")
    import dataclasses

    config = dataclasses.replace(reference.GPTConfig.preset("tiny"), **overrides)
    return reference.build_gpt(config)
