"""Model soups: uniform/weighted weight averaging and the greedy soup."""

import keras
import numpy as np
import pytest

from keras_llmopt.ensemble import average_weights, greedy_soup

pytestmark = pytest.mark.backend_agnostic


def _mlp(seed, name="mlp"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = keras.layers.LayerNormalization()(hidden)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden), name=name)


def _numpy(model, x):
    return keras.ops.convert_to_numpy(model(x))


def test_soup_of_identical_models_equals_the_model():
    model = _mlp(0)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    twin = _mlp(0, name="twin")
    soup = average_weights([model, twin, model])
    assert soup is not model and soup is not twin
    np.testing.assert_allclose(_numpy(soup, x), _numpy(model, x), atol=1e-6)


def test_weighted_average_is_the_weighted_mean_of_each_weight_and_copies():
    a, b = _mlp(0, "a"), _mlp(1, "b")
    before = [w.copy() for w in a.get_weights()]
    soup = average_weights([a, b], weights=[3, 1])
    for s, wa, wb in zip(soup.get_weights(), a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(s, 0.75 * wa + 0.25 * wb, atol=1e-6)
    for new, old in zip(a.get_weights(), before):
        np.testing.assert_array_equal(new, old)
    # The soup's variables are its own.
    assert {id(v) for v in soup.weights}.isdisjoint({id(v) for v in a.weights})


def test_different_architectures_name_the_member_and_weight():
    inputs = keras.Input((6,))
    wider = keras.layers.Dense(16, activation="relu")(inputs)
    wider = keras.layers.LayerNormalization()(wider)
    other = keras.Model(inputs, keras.layers.Dense(3)(wider), name="wider")
    with pytest.raises(ValueError, match=r"member 1 \('wider'\) differs .* at weight .*kernel"):
        average_weights([_mlp(0), other])
    fewer = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="fewer")
    with pytest.raises(ValueError, match=r"member 1 \('fewer'\) has 2 weights but"):
        average_weights([_mlp(0), fewer])
    with pytest.raises(ValueError, match=r"Received: models=\[\]"):
        average_weights([])
    with pytest.raises(ValueError, match=r"weight 1 must be a finite number >= 0"):
        average_weights([_mlp(0), _mlp(1)], weights=[1, -1])


def _regression_models():
    """Two noisy copies of a target linear map (their average is closer) and a bad one."""
    rng = np.random.default_rng(0)
    target = rng.normal(size=(16, 4)).astype("float32")
    models = []
    for name, kernel in [
        ("bad", rng.normal(size=(16, 4)) * 3),
        ("noisy_a", target + 0.5 * rng.normal(size=(16, 4))),
        ("noisy_b", target + 0.5 * rng.normal(size=(16, 4))),
    ]:
        inputs = keras.Input((16,))
        dense = keras.layers.Dense(4, use_bias=False)
        model = keras.Model(inputs, dense(inputs), name=name)
        dense.set_weights([kernel.astype("float32")])
        models.append(model)
    x = rng.normal(size=(256, 16)).astype("float32")
    return models, x, x @ target


def test_greedy_soup_adds_only_members_that_improve_the_held_out_score():
    models, x, y = _regression_models()
    calls = []

    def mse(model):
        calls.append(model.name)
        return float(np.mean((_numpy(model, x) - y) ** 2))

    soup, details = greedy_soup(models, mse, return_details=True)
    assert sorted(details.ingredients) == [1, 2]
    assert details.ingredients[0] == int(np.argmin(details.member_scores))
    assert [t[0] for t in details.trials] == [details.ingredients[1], 0]
    assert details.trials[1][2] is False  # adding "bad" made it worse
    assert details.soup_score < min(details.member_scores)
    np.testing.assert_allclose(
        soup.get_weights()[0],
        (models[1].get_weights()[0] + models[2].get_weights()[0]) / 2,
        atol=1e-6,
    )
    assert mse(soup) == pytest.approx(details.soup_score, rel=1e-6)
    assert len(calls) == 3 + 2 + 1

    # A score to maximize: the same choice with higher_is_better=True.
    soup_max = greedy_soup(models, lambda m: -mse(m), higher_is_better=True)
    np.testing.assert_allclose(soup_max.get_weights()[0], soup.get_weights()[0], atol=1e-6)


def test_greedy_soup_rejects_a_bad_eval_fn():
    models, _, _ = _regression_models()
    with pytest.raises(TypeError, match="must be callable"):
        greedy_soup(models, "bpb")
    with pytest.raises(TypeError, match="must return a number"):
        greedy_soup(models, lambda m: {"bpb": 1.0})
