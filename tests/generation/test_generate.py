"""Cached generation equals a full-recompute loop; refusals and argument errors are clear."""

import keras
import numpy as np
import pytest

from keras_llmopt import generation, reference
from keras_llmopt._src.benchmark import matrix_models


def _full_recompute(model, prompt, new_tokens, keras_hub=False):
    """Greedy decoding by running the whole prefix every step (no cache)."""
    tokens = np.asarray(prompt, "int32")
    for _ in range(new_tokens):
        inputs = (
            {"token_ids": tokens, "padding_mask": np.ones_like(tokens)} if keras_hub else tokens
        )
        logits = keras.ops.convert_to_numpy(model(inputs))[:, -1]
        tokens = np.concatenate([tokens, logits.argmax(-1)[:, None].astype("int32")], axis=1)
    return tokens


PROMPT = np.array([[72, 101, 108, 108, 111], [3, 1, 4, 1, 5]], "int32")


@pytest.mark.backend_agnostic
def test_greedy_generation_of_the_reference_gpt_equals_full_recompute():
    model = reference.build_gpt("tiny", seed=0)
    cached = generation.generate(model, PROMPT, 8)
    assert cached.dtype == np.int32 and cached.shape == (2, 13)
    np.testing.assert_array_equal(cached, _full_recompute(model, PROMPT, 8))


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma"])
def test_greedy_generation_of_keras_hub_causal_lms_equals_full_recompute(family):
    model = matrix_models.MODELS[family].build()
    cached = generation.generate(model, PROMPT, 5)
    np.testing.assert_array_equal(cached, _full_recompute(model, PROMPT, 5, keras_hub=True))


@pytest.mark.parametrize("family", ["sequential", "subclassed", "relu_gpt"])
def test_models_built_from_keras_layers_decode_with_the_cache(family):
    model = matrix_models.MODELS[family].build()
    cached = generation.generate(model, PROMPT[:1], 6)
    np.testing.assert_array_equal(cached, _full_recompute(model, PROMPT[:1], 6))


def test_compressed_models_decode_with_the_cache(fresh_tiny):
    from keras_llmopt import clustering, quantization, sparsity

    variants = {
        "pruned": sparsity.prune_low_magnitude(fresh_tiny, sparsity.ConstantSparsity(0.5, 0)),
        "qat": quantization.quantize_model(fresh_tiny),
        "clustered": clustering.cluster_weights(fresh_tiny, number_of_clusters=8),
    }
    for name, model in variants.items():
        cached = generation.generate(model, PROMPT[:1], 6)
        np.testing.assert_array_equal(cached, _full_recompute(model, PROMPT[:1], 6), err_msg=name)


@pytest.mark.backend_agnostic
def test_stream_yields_the_tokens_generate_returns():
    model = reference.build_gpt("tiny", seed=0)
    streamed = list(generation.stream(model, PROMPT, 5, sampler="top_p", top_p=0.8, seed=3))
    assert all(t.shape == (2,) and t.dtype == np.int32 for t in streamed)
    generated = generation.generate(model, PROMPT, 5, sampler="top_p", top_p=0.8, seed=3)
    np.testing.assert_array_equal(np.stack(streamed, axis=1), generated[:, 5:])


@pytest.mark.backend_agnostic
def test_seeded_sampling_is_reproducible_and_seeds_matter():
    model = reference.build_gpt("tiny", seed=0)
    runs = [
        generation.generate(model, PROMPT, 16, sampler="temperature", temperature=2.0, seed=s)
        for s in (7, 7, 8)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.backend_agnostic
def test_stop_tokens_end_generation_early():
    model = reference.build_gpt("tiny", seed=0)
    free = generation.generate(model, PROMPT[:1], 10)
    stop = int(free[0, 7])  # the third new token
    stopped = generation.generate(model, PROMPT[:1], 10, stop_token_ids=[stop])
    first = int(np.argmax(free[0, 5:] == stop)) + 5
    np.testing.assert_array_equal(stopped[0], free[0, : first + 1])


@pytest.mark.backend_agnostic
def test_prompt_plus_new_tokens_beyond_the_model_length_is_a_clear_error():
    model = reference.build_gpt("tiny", seed=0)  # 64 positions
    with pytest.raises(ValueError, match=r"max_new_tokens=60 = 65 positions exceed the model"):
        generation.generate(model, PROMPT[:1], 60)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "beam"}, "`sampler` must be one of"),
        ({"sampler": "top_k"}, "needs top_k="),
        ({"sampler": "top_p", "top_p": 1.5}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_bad_sampling_arguments_are_named(kwargs, match):
    model = reference.build_gpt("tiny", seed=0)
    with pytest.raises(ValueError, match=match):
        generation.generate(model, PROMPT, 2, **kwargs)


@pytest.mark.backend_agnostic
def test_bad_prompts_are_named():
    model = reference.build_gpt("tiny", seed=0)
    with pytest.raises(ValueError, match=r"token ids in \[0, 256\)"):
        generation.generate(model, [[1, 999]], 2)
    with pytest.raises(ValueError, match="shape"):
        generation.generate(model, np.zeros((1, 2, 3), "int32"), 2)


def _gpt_with(block):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(32, 16)(tokens)
    x = block(x)
    return keras.Model(tokens, keras.layers.Dense(32)(x))


def test_models_that_cannot_use_a_cache_are_refused_with_the_reason():
    conv = _gpt_with(keras.layers.Conv1D(16, 3, padding="causal", name="conv"))
    with pytest.raises(generation.CachedDecodingError, match=r"'conv' \(Conv1D\) mixes positions"):
        generation.generate(conv, [[1, 2]], 2)
    mha = keras.layers.MultiHeadAttention(2, 8, name="bidirectional")
    bidirectional = _gpt_with(lambda x: mha(x, x))
    with pytest.raises(generation.CachedDecodingError, match="without use_causal_mask=True"):
        generation.generate(bidirectional, [[1, 2]], 2)


class _ArangePositions(keras.Model):
    """Positions from arange inside call: the cache cannot know the offset."""

    def __init__(self):
        super().__init__()
        self.tokens = keras.layers.Embedding(32, 16)
        self.positions = keras.layers.Embedding(16, 16)
        self.attention = keras.layers.MultiHeadAttention(2, 8)
        self.head = keras.layers.Dense(32)

    def call(self, tokens):
        length = keras.ops.shape(tokens)[1]
        x = self.tokens(tokens) + self.positions(keras.ops.arange(length))
        return self.head(self.attention(x, x, use_causal_mask=True))


def test_custom_position_code_fails_the_probe_with_the_figure():
    model = _ArangePositions()
    model(np.zeros((1, 4), "int32"))
    with pytest.raises(generation.CachedDecodingError, match="away from the model's full forward"):
        generation.generate(model, [[1, 2]], 2)
    # The hooks are gone afterwards: the layer calls its own methods again.
    assert "call" not in vars(model.attention)
    assert "_compute_attention" not in vars(model.attention)
