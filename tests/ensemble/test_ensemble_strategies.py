"""The fusion maths of EnsembleModel against numpy, on members with crafted outputs."""

import keras
import numpy as np
import pytest

from keras_llmopt.ensemble import EnsembleModel

pytestmark = pytest.mark.backend_agnostic

# Per-position argmax of three members (rows) and the majority written out by hand.
# Position 2 is a three-way tie (0, 1, 2 -> 0) and position 4 another (1, 2, 3 -> 1).
CRAFTED_VOTES = [
    [1, 0, 2, 3, 3],
    [1, 3, 0, 2, 1],
    [2, 3, 1, 3, 2],
]
CRAFTED_MAJORITY = [1, 3, 0, 3, 1]


def _run(model, x):
    return keras.ops.convert_to_numpy(model(x))


def test_vote_is_the_majority_per_token_on_crafted_disagreements(make_selectors, helpers):
    members = make_selectors(3, 4, length=5)
    member_logits = helpers.logits_with_argmax(np.asarray(CRAFTED_VOTES)[:, None, :], 4)
    x = helpers.pack(member_logits)  # (1, 5, 12)

    one_hot = _run(
        EnsembleModel(members, strategy="vote", vote_output="one_hot", output="probabilities"), x
    )
    assert one_hot.shape == (1, 5, 4)
    np.testing.assert_array_equal(one_hot[0].argmax(-1), CRAFTED_MAJORITY)
    np.testing.assert_array_equal(one_hot.sum(-1), np.ones((1, 5)))
    assert set(np.unique(one_hot)) == {0.0, 1.0}

    counts = _run(EnsembleModel(members, strategy="vote", output="probabilities"), x)
    votes = np.asarray(CRAFTED_VOTES)
    expected = np.stack([np.bincount(votes[:, t], minlength=4) / 3 for t in range(5)])
    np.testing.assert_allclose(counts[0], expected, atol=1e-6)


def test_vote_tie_goes_to_the_lowest_class_index(make_selectors, helpers):
    members = make_selectors(2, 5)
    member_logits = helpers.logits_with_argmax([[2, 0, 4], [1, 3, 4]], 5)  # 2 members, 3 rows
    ensemble = EnsembleModel(
        members, strategy="vote", vote_output="one_hot", output="probabilities"
    )
    winners = _run(ensemble, helpers.pack(member_logits)).argmax(-1)
    np.testing.assert_array_equal(winners, [1, 0, 4])


def test_weighted_vote_lets_a_heavy_member_outvote_two_others(make_selectors, helpers):
    members = make_selectors(3, 4, length=5)
    x = helpers.pack(helpers.logits_with_argmax(np.asarray(CRAFTED_VOTES)[:, None, :], 4))
    ensemble = EnsembleModel(
        members, strategy="vote", weights=[3, 1, 1], vote_output="one_hot", output="probabilities"
    )
    # Member 0 (weight 0.6) wins everywhere against the other two (0.2 each).
    np.testing.assert_array_equal(_run(ensemble, x)[0].argmax(-1), CRAFTED_VOTES[0])


def test_vote_log_probs_are_smoothed_and_finite(make_selectors, helpers):
    members = make_selectors(3, 4, length=5)
    x = helpers.pack(helpers.logits_with_argmax(np.asarray(CRAFTED_VOTES)[:, None, :], 4))
    counts = _run(EnsembleModel(members, strategy="vote", output="probabilities"), x)
    log_probs = _run(EnsembleModel(members, strategy="vote", vote_epsilon=0.1), x)
    assert np.isfinite(log_probs).all()
    np.testing.assert_allclose(np.exp(log_probs), 0.9 * counts + 0.1 / 4, atol=1e-6)


def test_weighted_with_one_hot_weights_equals_that_member(make_selectors, helpers):
    members = make_selectors(3, 6, length=4)
    member_logits = np.random.default_rng(1).normal(size=(3, 2, 4, 6)) * 3
    x = helpers.pack(member_logits)
    for strategy in ("weighted", "logit_mean"):
        ensemble = EnsembleModel(members, strategy=strategy, weights=[0, 1, 0])
        log_probs = _run(ensemble, x)
        np.testing.assert_allclose(np.exp(log_probs), helpers.softmax(member_logits[1]), atol=1e-6)
    # A vote with one-hot weights is that member's argmax.
    vote = EnsembleModel(members, strategy="vote", weights=[0, 1, 0], output="probabilities")
    np.testing.assert_array_equal(_run(vote, x).argmax(-1), member_logits[1].argmax(-1))


def test_weighted_prob_mean_and_logit_mean_match_numpy(make_selectors, helpers):
    members = make_selectors(3, 5, length=3)
    member_logits = np.random.default_rng(2).normal(size=(3, 2, 3, 5)) * 2
    x = helpers.pack(member_logits)
    probs = helpers.softmax(member_logits)

    weighted = _run(EnsembleModel(members, weights=[1, 2, 1], output="probabilities"), x)
    np.testing.assert_allclose(weighted, np.tensordot([0.25, 0.5, 0.25], probs, 1), atol=1e-6)

    prob_mean = _run(EnsembleModel(members, strategy="prob_mean"), x)
    np.testing.assert_allclose(np.exp(prob_mean), probs.mean(0), atol=1e-6)

    raw = _run(EnsembleModel(members, strategy="logit_mean", output="logits"), x)
    np.testing.assert_allclose(raw, member_logits.mean(0), atol=1e-5)
    normalized = _run(EnsembleModel(members, strategy="logit_mean", output="probabilities"), x)
    np.testing.assert_allclose(normalized, helpers.softmax(member_logits.mean(0)), atol=1e-6)


def test_classifier_outputs_are_fused_per_example(make_selectors, helpers):
    members = make_selectors(3, 4)  # (batch, features) -> (batch, classes)
    votes = np.asarray(CRAFTED_VOTES)  # 5 examples
    x = helpers.pack(helpers.logits_with_argmax(votes, 4))
    ensemble = EnsembleModel(
        members, strategy="vote", vote_output="one_hot", output="probabilities"
    )
    np.testing.assert_array_equal(_run(ensemble, x).argmax(-1), CRAFTED_MAJORITY)
    weighted = _run(EnsembleModel(members, output="probabilities"), x)
    assert weighted.shape == (5, 4)
    np.testing.assert_allclose(weighted.sum(-1), 1.0, atol=1e-6)


def test_probability_members_are_detected_and_fused_like_logit_members(make_selectors, helpers):
    logit_members = make_selectors(2, 5, length=3)
    prob_members = make_selectors(2, 5, length=3, softmax=[True, False])
    x = helpers.pack(np.random.default_rng(3).normal(size=(2, 2, 3, 5)))

    ensemble = EnsembleModel(prob_members)
    assert ensemble.member_outputs == ["probabilities", "logits"]
    expected = _run(EnsembleModel(logit_members), x)
    np.testing.assert_allclose(_run(ensemble, x), expected, atol=1e-5)


def test_probability_output_detected_by_probe_without_softmax_layer(helpers):
    inputs = keras.Input((3, 4))
    outputs = keras.layers.Activation("softmax")(keras.layers.Dense(4)(inputs))
    hidden_softmax = keras.Model(inputs, outputs)
    plain = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    ensemble = EnsembleModel([hidden_softmax, plain])
    assert ensemble.member_outputs == ["probabilities", "logits"]


def test_nested_ensemble_is_a_member_like_any_other(make_selectors, helpers):
    members = make_selectors(3, 5, length=2)
    x = helpers.pack(np.random.default_rng(4).normal(size=(3, 2, 2, 5)))
    inner = EnsembleModel(members[:2])  # log probabilities, read as logits
    nested = EnsembleModel([inner, members[2]], weights=[2, 1])
    assert nested.member_outputs == ["logits", "logits"]
    flat = EnsembleModel(members, strategy="prob_mean")
    np.testing.assert_allclose(_run(nested, x), _run(flat, x), atol=1e-5)
