"""Distiller: the soft-target loss, training a student, and a frozen teacher."""

import keras
import numpy as np
import pytest

from keras_llmopt.ensemble import Distiller, EnsembleModel, distillation_loss

pytestmark = pytest.mark.backend_agnostic


def _student(width, classes, seed=0, activation=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,))
    return keras.Model(
        inputs, keras.layers.Dense(classes, activation=activation)(inputs), name="student"
    )


def _log_softmax(x):
    x = np.asarray(x, "float64")
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_loss(teacher, student, labels, temperature, alpha):
    t = _log_softmax(teacher / temperature)
    s = _log_softmax(student / temperature)
    soft = temperature**2 * (np.exp(t) * (t - s)).sum(-1)
    hard = -np.take_along_axis(_log_softmax(student), labels[..., None], -1)[..., 0]
    return alpha * hard + (1 - alpha) * soft


@pytest.mark.parametrize("alpha, temperature", [(0.0, 1.0), (1.0, 2.0), (0.3, 4.0)])
def test_compute_loss_is_the_soft_target_objective(make_selectors, helpers, alpha, temperature):
    rng = np.random.default_rng(0)
    teacher = make_selectors(1, 5)[0]
    student = _student(5, 5)
    x = (rng.normal(size=(8, 5)) * 2).astype("float32")
    labels = rng.integers(0, 5, size=(8,))
    distiller = Distiller(teacher, student, temperature=temperature, alpha=alpha)
    student_logits = keras.ops.convert_to_numpy(student(x))
    loss = distiller.compute_loss(x, labels, distiller(x))
    expected = _numpy_loss(x, student_logits, labels, temperature, alpha).mean()
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loss)), expected, rtol=1e-5)

    # One-hot labels give the same loss as integer labels; sample weights weight rows.
    one_hot = np.eye(5, dtype="float32")[labels]
    loss_one_hot = distiller.compute_loss(x, one_hot, distiller(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss_one_hot), expected, rtol=1e-5)
    weights = np.zeros((8,), "float32")
    weights[:4] = 2.0
    weighted = distiller.compute_loss(x, labels, distiller(x), sample_weight=weights)
    per_row = _numpy_loss(x, student_logits, labels, temperature, alpha)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weighted), (per_row * weights).mean(), rtol=1e-5
    )


def test_distillation_loss_is_zero_for_equal_distributions():
    logits = np.random.default_rng(0).normal(size=(3, 7)).astype("float32")
    loss = keras.ops.convert_to_numpy(distillation_loss(logits, logits + 5.0, 2.0))
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_student_learns_the_ensemble_and_the_teacher_stays_frozen(make_selectors, helpers):
    rng = np.random.default_rng(0)
    members = make_selectors(2, 4)
    teacher = EnsembleModel(members, strategy="weighted", weights=[3, 1])
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student = _student(8, 4)
    x = helpers.pack(rng.normal(size=(2, 512, 4)) * 2)
    teacher_probs = np.exp(keras.ops.convert_to_numpy(teacher(x)))

    def gap():
        student_logits = keras.ops.convert_to_numpy(student(x))
        return float(
            keras.ops.convert_to_numpy(
                keras.ops.mean(distillation_loss(np.log(teacher_probs), student_logits, 1.0))
            )
        )

    def agreement():
        student_argmax = keras.ops.convert_to_numpy(student(x)).argmax(-1)
        return (student_argmax == teacher_probs.argmax(-1)).mean()

    before, agreement_before = gap(), agreement()
    distiller = Distiller(teacher, student, temperature=2.0, alpha=0.0)
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }
    distiller.compile(optimizer=keras.optimizers.Adam(0.05))
    history = distiller.fit(x, batch_size=64, epochs=8, verbose=0)  # no labels: alpha=0
    after = gap()

    assert after < 0.2 * before, (before, after)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # A linear student cannot match a mixture exactly, but it now mostly agrees.
    assert agreement_before < 0.5 and agreement() > 0.8, (agreement_before, agreement())
    for new, old in zip(teacher.get_weights(), teacher_before):
        np.testing.assert_array_equal(new, old)
    assert all(m.trainable for m in members) and teacher.trainable
    assert distiller.student is student


def test_distiller_trains_a_reference_gpt_on_token_labels():
    from keras_llmopt import reference

    teacher = EnsembleModel([reference.build_gpt("tiny", seed=s) for s in (0, 1)])
    student = reference.build_gpt("tiny", seed=5)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(8, 16)).astype("int32")
    labels = rng.integers(0, 256, size=(8, 16)).astype("int32")
    before = [w.copy() for w in student.get_weights()]
    distiller = Distiller(teacher, student)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = distiller.fit(tokens, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.array_equal(a, b) for a, b in zip(student.get_weights(), before))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"temperature": 0.0}, r"`temperature` must be a finite number > 0"),
        ({"temperature": float("inf")}, r"`temperature` must be a finite number > 0"),
        ({"alpha": 1.5}, r"`alpha` must be a number in \[0, 1\]. Received: alpha=1.5"),
        ({"teacher_outputs": "scores"}, r"`teacher_outputs` must be one of"),
    ],
)
def test_bad_options(make_selectors, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Distiller(make_selectors(1, 4)[0], _student(4, 4), **kwargs)


def test_bad_models(make_selectors):
    teacher = make_selectors(1, 4)[0]
    with pytest.raises(ValueError, match="must output logits.*applies a softmax"):
        Distiller(teacher, _student(4, 4, activation="softmax"))
    with pytest.raises(ValueError, match=r"output shape \(None, 6\)"):
        Distiller(teacher, _student(4, 6))
    with pytest.raises(TypeError, match="student"):
        Distiller(teacher, "student")
    distiller = Distiller(teacher, _student(4, 4), alpha=0.5)
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match="labels `y` are needed when alpha > 0"):
        distiller.fit(np.zeros((4, 4), "float32"), epochs=1, verbose=0)
