import math

import keras
import numpy as np
import pytest

from keras_llmopt import reference


@pytest.mark.backend_agnostic
def test_tiny_learns(tiny_corpus):
    model = reference.build_gpt("tiny", seed=0)
    before = reference.evaluate(model, tiny_corpus, num_windows=64)
    assert before.bpb > 7.5  # about log2(256) = 8 bits for an untrained model
    reference.train(model, tiny_corpus, steps=150, learning_rate=3e-3, verbose=0)
    after = reference.evaluate(model, tiny_corpus, num_windows=64)
    assert after.bpb < before.bpb - 3.0
    assert after.perplexity == pytest.approx(math.exp(after.loss))
    assert after.bpb == pytest.approx(after.loss / math.log(2))


def test_trained_model_is_cached(trained_tiny, tiny_corpus):
    path = reference.trained_model_path("tiny", corpus=tiny_corpus)
    assert path.exists()
    again = reference.trained_model("tiny", corpus=tiny_corpus)
    tokens = tiny_corpus.validation[:2, :-1].astype("int32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again(tokens)),
        keras.ops.convert_to_numpy(trained_tiny(tokens)),
        atol=1e-6,
    )
    assert reference.evaluate(trained_tiny, tiny_corpus).bpb < 4.0


def test_evaluate_is_the_same_for_a_callable_and_a_saved_model(trained_tiny, tiny_corpus, tmp_path):
    path = tmp_path / "m.keras"
    trained_tiny.save(path)
    direct = reference.evaluate(trained_tiny, tiny_corpus, num_windows=16)
    from_file = reference.evaluate(str(path), tiny_corpus, num_windows=16)
    as_fn = reference.evaluate(
        lambda t: keras.ops.convert_to_numpy(trained_tiny(t)), tiny_corpus, num_windows=16
    )
    assert from_file.bpb == pytest.approx(direct.bpb, abs=1e-6)
    assert as_fn.bpb == pytest.approx(direct.bpb, abs=1e-6)


def test_evaluate_rejects_unknown_artifacts(tiny_corpus):
    with pytest.raises(ValueError, match="accepted: a keras.Model"):
        reference.evaluate("model.pt", tiny_corpus)


def test_evaluate_checks_output_shape(tiny_corpus):
    with pytest.raises(ValueError, match="expected"):
        reference.evaluate(lambda t: np.zeros((len(t), 256)), tiny_corpus, num_windows=2)
