"""Calibration data in every accepted form becomes the same model-ready batches."""

import numpy as np
import pytest

from keras_llmopt import reference
from keras_llmopt._src.llm.calibration_data import calibration_batches

pytestmark = pytest.mark.backend_agnostic

TOKENS = np.arange(10 * 12, dtype="int32").reshape(10, 12) % 250


@pytest.fixture(scope="module")
def gpt():
    return reference.build_gpt("tiny")


def _stacked(batches):
    return np.concatenate([np.asarray(b) for b in batches])


def test_token_ids_are_cut_counted_and_batched(gpt):
    batches = calibration_batches(gpt, TOKENS, num_samples=7, sequence_length=8, batch_size=3)
    assert [b.shape for b in batches] == [(3, 8), (3, 8), (1, 8)]
    assert all(b.dtype == np.int32 for b in batches)
    np.testing.assert_array_equal(_stacked(batches), TOKENS[:7, :8])


def test_fewer_examples_than_asked_uses_them_all(gpt):
    batches = calibration_batches(gpt, TOKENS[:3], num_samples=128, batch_size=8)
    np.testing.assert_array_equal(_stacked(batches), TOKENS[:3])


def test_dataset_of_pairs_and_generators_give_the_same_batches(gpt):
    import tensorflow as tf

    expected = _stacked(calibration_batches(gpt, TOKENS, num_samples=9, batch_size=4))
    pairs = tf.data.Dataset.from_tensor_slices((TOKENS, TOKENS)).batch(4)
    from_pairs = calibration_batches(gpt, pairs, num_samples=9, batch_size=4)
    from_generator = calibration_batches(
        gpt, (TOKENS[i : i + 2] for i in range(0, 10, 2)), num_samples=9, batch_size=4
    )
    single_rows = calibration_batches(gpt, list(TOKENS), num_samples=9, batch_size=4)
    for batches in (from_pairs, from_generator, single_rows):
        np.testing.assert_array_equal(_stacked(batches), expected)


def test_a_dict_keyed_model_gets_a_padding_mask_of_ones(tiny_llama_lm):
    lm = tiny_llama_lm()
    (batch,) = calibration_batches(lm, TOKENS % 100, num_samples=4, batch_size=4)
    assert set(batch) == {"token_ids", "padding_mask"}
    np.testing.assert_array_equal(batch["token_ids"], TOKENS[:4] % 100)
    assert batch["padding_mask"].shape == (4, 12) and batch["padding_mask"].all()


def test_a_dict_of_arrays_is_kept_as_given(tiny_llama_lm):
    lm = tiny_llama_lm()
    mask = np.ones((4, 12), "int32")
    mask[:, 9:] = 0
    (batch,) = calibration_batches(
        lm, {"token_ids": TOKENS[:4] % 100, "padding_mask": mask}, sequence_length=10
    )
    np.testing.assert_array_equal(batch["padding_mask"], mask[:, :10])


def _gpt2_with_preprocessor():
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "Ġ": 3, "Ġa": 4, "ab": 5, "Ġab": 6}
    merges = ["Ġ a", "a b", "Ġa b"]
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=7,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=32,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def test_strings_are_tokenized_by_the_models_preprocessor_at_the_asked_length():
    lm = _gpt2_with_preprocessor()
    batches = calibration_batches(lm, ["ab ab a", "b a"], sequence_length=6)
    (batch,) = batches
    assert batch["token_ids"].shape == (2, 6)
    assert batch["token_ids"][0, 0] == 0  # the start token the preprocessor adds
    assert batch["padding_mask"][1].sum() < batch["padding_mask"][0].sum()
    assert lm.preprocessor.sequence_length == 16, "the user's preprocessor was changed"


def test_strings_without_a_preprocessor_name_the_model(gpt):
    with pytest.raises(ValueError, match=r"model 'gpt_tiny'.*no `preprocessor`"):
        calibration_batches(gpt, ["some text"])


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (np.zeros((4, 8), "float32"), {}, r"int token ids of shape \(N, T\).*float32"),
        (np.zeros(8, "int32"), {}, r"shape \(N, T\).*\(8,\)"),
        (3.5, {}, r"must be int token ids.*Received: float"),
        ([], {}, "holds no examples"),
        (TOKENS, {"num_samples": 0}, r"`num_samples` must be a positive integer.*0"),
        (TOKENS, {"batch_size": True}, r"`batch_size` must be a positive integer"),
        (TOKENS, {"sequence_length": -2}, r"`sequence_length` must be None or a positive"),
    ],
    ids=["float", "1d", "scalar", "empty", "num_samples", "batch_size", "sequence_length"],
)
def test_bad_calibration_data_is_a_clear_error(gpt, data, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        calibration_batches(gpt, data, **kwargs)
