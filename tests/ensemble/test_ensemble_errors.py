"""Bad inputs to EnsembleModel raise clear errors naming the member and the shapes."""

import keras
import numpy as np
import pytest

from keras_llmopt.ensemble import EnsembleModel

pytestmark = pytest.mark.backend_agnostic


def _classifier(features, classes, name):
    inputs = keras.Input((features,))
    return keras.Model(inputs, keras.layers.Dense(classes)(inputs), name=name)


def test_empty_member_list():
    with pytest.raises(ValueError, match=r"at least one.*Received: models=\[\]"):
        EnsembleModel([])


def test_member_that_is_not_a_model():
    with pytest.raises(TypeError, match=r"models\[1\].*ndarray"):
        EnsembleModel([_classifier(3, 4, "a"), np.zeros(3)])


def test_different_output_shapes_name_the_member_and_shapes():
    models = [_classifier(3, 4, "four"), _classifier(3, 4, "four_b"), _classifier(3, 5, "five")]
    with pytest.raises(ValueError) as info:
        EnsembleModel(models)
    message = str(info.value)
    assert "member 2 ('five')" in message
    assert "(None, 5)" in message and "(None, 4)" in message
    assert "output shape" in message


def test_different_input_shapes_name_the_member_and_shapes():
    with pytest.raises(ValueError, match=r"member 1 \('wide'\) has input shape \(None, 7\)"):
        EnsembleModel([_classifier(3, 4, "narrow"), _classifier(7, 4, "wide")])


def test_multi_output_member_is_rejected():
    inputs = keras.Input((3,))
    two = keras.Model(inputs, [keras.layers.Dense(4)(inputs), keras.layers.Dense(4)(inputs)])
    with pytest.raises(ValueError, match="single tensor output"):
        EnsembleModel([_classifier(3, 4, "a"), two])


@pytest.mark.parametrize(
    "weights, pattern",
    [
        ([1.0], r"1 entries but there are 2 members"),
        ([1.0, 2.0, 3.0], r"3 entries but there are 2 members"),
        ([1.0, -0.5], r"weight 1 must be a finite number >= 0"),
        ([float("nan"), 1.0], r"weight 0 must be a finite number"),
        ([0.0, 0.0], r"must not all be zero"),
        (["a", 1.0], r"non-negative numbers"),
    ],
)
def test_bad_weights(weights, pattern):
    models = [_classifier(3, 4, "a"), _classifier(3, 4, "b")]
    with pytest.raises(ValueError, match=pattern):
        EnsembleModel(models, weights=weights)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"strategy": "median"}, r"`strategy` must be one of .*Received: strategy='median'"),
        ({"output": "softmax"}, r"`output` must be one of"),
        ({"strategy": "vote", "vote_output": "soft"}, r"`vote_output` must be one of"),
        ({"vote_epsilon": 1.0}, r"0 <= vote_epsilon < 1"),
        ({"strategy": "prob_mean", "weights": [1, 2]}, r"takes no weights"),
        ({"strategy": "vote", "trainable_weights": True}, r"differentiable mixture"),
        ({"member_outputs": "scores"}, r"`member_outputs` entries must be one of"),
        ({"member_outputs": ["logits"]}, r"`member_outputs` has 1 entries but there are 2"),
    ],
)
def test_bad_options(kwargs, pattern):
    models = [_classifier(3, 4, "a"), _classifier(3, 4, "b")]
    with pytest.raises(ValueError, match=pattern):
        EnsembleModel(models, **kwargs)


def test_unbuilt_subclassed_member_needs_declared_output_kind():
    class Tiny(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match=r"member_outputs='logits' or 'probabilities'"):
        EnsembleModel([Tiny(), Tiny()])
    ensemble = EnsembleModel([Tiny(), Tiny()], member_outputs="logits")
    assert ensemble(np.ones((2, 3), "float32")).shape == (2, 4)


def test_unbuilt_member_may_declare_its_output_kind():
    class Declared(keras.Model):
        declared_output_kind = "probabilities"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(4, activation="softmax")

        def call(self, x):
            return self.dense(x)

    # No probe is possible (no known inputs), the declaration is read instead.
    ensemble = EnsembleModel([Declared(), Declared()])
    assert ensemble.member_outputs == ["probabilities", "probabilities"]
    inner = EnsembleModel([Declared(), Declared()], output="probabilities")
    assert inner.declared_output_kind == "probabilities"
    assert EnsembleModel([inner, Declared()]).member_outputs == ["probabilities"] * 2


def test_subclassed_members_with_different_outputs_fail_at_call():
    class Head(keras.Model):
        def __init__(self, classes, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(classes)

        def call(self, x):
            return self.dense(x)

    ensemble = EnsembleModel([Head(4, name="h4"), Head(6, name="h6")], member_outputs="logits")
    with pytest.raises(ValueError, match=r"member 1 \('h6'\) returned shape \(2, 6\)"):
        ensemble(np.ones((2, 3), "float32"))
