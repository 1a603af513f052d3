"""Learned mixture weights: fit moves only the mixture, toward the better member."""

import keras
import numpy as np
import pytest

from keras_llmopt.ensemble import EnsembleModel

pytestmark = pytest.mark.backend_agnostic


def test_learned_weights_move_toward_the_better_member(make_selectors, helpers):
    num_classes, rows = 6, 256
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, size=(rows, 4))
    noise = rng.normal(size=(2, rows, 4, num_classes))
    good = noise[0] + 3.0 * np.eye(num_classes)[labels]  # member 0 usually right
    bad = noise[1]  # member 1 guesses
    x = helpers.pack([good, bad])
    members = make_selectors(2, num_classes, length=4)
    before = [m.get_weights() for m in members]

    ensemble = EnsembleModel(members, strategy="weighted", trainable_weights=True)
    assert [v.name for v in ensemble.trainable_variables] == ["mixture_logits"]
    np.testing.assert_allclose(ensemble.mixture_weights, [0.5, 0.5], atol=1e-6)
    ensemble.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ensemble.fit(x, labels, batch_size=32, epochs=3, verbose=0)

    learned = ensemble.mixture_weights
    assert learned[0] > 0.8, learned
    np.testing.assert_allclose(learned.sum(), 1.0, atol=1e-6)
    # The members were frozen through the ensemble, not by changing their own flags.
    for member, weights in zip(members, before):
        assert member.trainable
        for new, old in zip(member.get_weights(), weights):
            np.testing.assert_array_equal(new, old)


def test_learned_logit_mean_weights_also_train(make_selectors, helpers):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(128,))
    good = rng.normal(size=(128, 4)) + 3.0 * np.eye(4)[labels]
    bad = rng.normal(size=(128, 4))
    ensemble = EnsembleModel(make_selectors(2, 4), strategy="logit_mean", trainable_weights=True)
    ensemble.compile(
        optimizer=keras.optimizers.Adam(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ensemble.fit(helpers.pack([bad, good]), labels, batch_size=32, epochs=3, verbose=0)
    assert ensemble.mixture_weights[1] > 0.7


def test_fixed_ensemble_trains_nothing_and_reports_member_variables_as_frozen(make_selectors):
    members = make_selectors(2, 3)
    ensemble = EnsembleModel(members, weights=[1, 3])
    assert ensemble.trainable_variables == []
    member_ids = {id(v) for m in members for v in m.weights}
    assert member_ids <= {id(v) for v in ensemble.non_trainable_weights}
    np.testing.assert_allclose(ensemble.mixture_weights, [0.25, 0.75], atol=1e-6)
