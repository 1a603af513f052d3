"""Fixtures of the one-shot tests: the trained tiny GPT with LLM-like activation outliers."""

import keras
import numpy as np
import pytest

OUTLIER_FACTOR = 20.0
OUTLIER_CHANNELS = tuple(range(0, 64, 8))  # 8 of the tiny GPT's 64 features


def with_outlier_channels(model, factor=OUTLIER_FACTOR, channels=OUTLIER_CHANNELS):
    """A copy of a reference GPT whose block norms emit a few ``factor``-times larger features.

    Large language models carry a few input features far larger than the rest (the
    "outlier features" Wanda and SmoothQuant are built for); a briefly trained tiny
    GPT has none. Scaling those features' norm gamma and beta by ``factor`` and the
    matching input rows of every consumer's kernel by ``1 / factor`` gives them to it
    without changing the function: outputs equal the original's to float rounding.
    """
    out = keras.models.clone_model(model)
    out.set_weights(model.get_weights())
    rows = list(channels)
    for layer in out.layers:
        if not isinstance(layer, keras.layers.LayerNormalization) or layer.name == "final_ln":
            continue
        for weight in (layer.gamma, layer.beta):
            value = np.asarray(weight).copy()
            value[rows] *= factor
            weight.assign(value)
        consumers = {id(n.operation): n.operation for n in layer._outbound_nodes}.values()
        for consumer in consumers:
            if isinstance(consumer, keras.layers.MultiHeadAttention):
                dense = [consumer._query_dense, consumer._key_dense, consumer._value_dense]
            else:
                dense = [consumer]
            for d in dense:
                kernel = np.asarray(d.kernel).copy()
                kernel[rows] /= factor
                d.kernel.assign(kernel)
    return out


@pytest.fixture(scope="session")
def outlier_tiny(trained_tiny, tiny_corpus):
    """``trained_tiny`` with activation outliers, checked equal to it (do not mutate)."""
    out = with_outlier_channels(trained_tiny)
    x = tiny_corpus.train[:4, :-1].astype("int32")
    before, after = np.asarray(trained_tiny(x)), np.asarray(out(x))
    np.testing.assert_allclose(after, before, atol=1e-4 * np.abs(before).max())
    return out
