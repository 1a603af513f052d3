"""EnsembleModel and Distiller save to .keras with their members and load back."""

import os

import keras
import numpy as np
import pytest

from keras_llmopt.ensemble import Distiller, EnsembleModel


@pytest.mark.backend_agnostic
def test_round_trip_keeps_members_options_and_learned_weights(make_selectors, helpers, tmp_path):
    members = make_selectors(3, 5, length=4, softmax=[False, True, False])
    ensemble = EnsembleModel(members, strategy="weighted", trainable_weights=True)
    ensemble.mixture_logits.assign(np.asarray([0.5, -1.0, 2.0], "float32"))
    x = helpers.pack(np.random.default_rng(0).normal(size=(3, 2, 4, 5)))
    expected = keras.ops.convert_to_numpy(ensemble(x))

    path = str(tmp_path / "ensemble.keras")
    ensemble.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, EnsembleModel)
    assert loaded.strategy == "weighted"
    assert loaded.member_outputs == ["logits", "probabilities", "logits"]
    assert len(loaded.members) == 3 and all(m is not o for m, o in zip(loaded.members, members))
    np.testing.assert_allclose(loaded.mixture_weights, ensemble.mixture_weights, atol=1e-7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    assert [v.name for v in loaded.trainable_variables] == ["mixture_logits"]


@pytest.mark.backend_agnostic
def test_vote_ensemble_of_reference_gpts_round_trips(tmp_path):
    from keras_llmopt import reference

    members = [reference.build_gpt("tiny", seed=s) for s in (0, 1, 2)]
    ensemble = EnsembleModel(members, strategy="vote", vote_output="one_hot", vote_epsilon=0.05)
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 12)).astype("int32")
    expected = keras.ops.convert_to_numpy(ensemble(tokens))
    assert expected.shape == (2, 12, 256)

    path = str(tmp_path / "vote.keras")
    ensemble.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.strategy, loaded.vote_output, loaded.vote_epsilon) == ("vote", "one_hot", 0.05)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(tokens)), expected, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["vote.keras"]


@pytest.mark.backend_agnostic
def test_distiller_round_trips_with_teacher_and_student(make_selectors, helpers, tmp_path):
    teacher = EnsembleModel(make_selectors(2, 4))
    inputs = keras.Input((8,))
    student = keras.Model(inputs, keras.layers.Dense(4)(inputs), name="student")
    distiller = Distiller(teacher, student, temperature=3.0, alpha=0.25)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Distiller) and isinstance(loaded.teacher, EnsembleModel)
    assert (loaded.temperature, loaded.alpha) == (3.0, 0.25)
    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.student(x)),
        keras.ops.convert_to_numpy(student(x)),
        atol=1e-6,
    )
