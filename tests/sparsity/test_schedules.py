import numpy as np
import pytest
from keras import ops

from keras_llmopt import sparsity
from keras_llmopt._src.sparsity import schedules

STEPS = [-1, 0, 1, 5, 10, 11, 37, 50, 99, 100, 101, 150]


def _values(schedule):
    out = []
    for step in STEPS:
        should, value = schedule(ops.convert_to_tensor(step, "int32"))
        out.append((bool(ops.convert_to_numpy(should)), float(ops.convert_to_numpy(value))))
    return out


@pytest.mark.backend_agnostic
def test_polynomial_decay_values():
    schedule = sparsity.PolynomialDecay(0.1, 0.6, begin_step=10, end_step=100, frequency=10)
    values = dict(zip(STEPS, _values(schedule)))
    assert values[10] == (True, pytest.approx(0.1))
    assert values[100] == (True, pytest.approx(0.6))
    assert values[150] == (False, pytest.approx(0.6))
    assert values[11][0] is False and values[5][0] is False
    p = (50 - 10) / 90
    assert values[50] == (True, pytest.approx(0.6 + (0.1 - 0.6) * (1 - p) ** 3, rel=1e-5))


@pytest.mark.backend_agnostic
def test_constant_sparsity_values_and_open_end():
    schedule = sparsity.ConstantSparsity(0.5, begin_step=0, frequency=50)
    values = _values(schedule)
    assert [v[0] for v in values] == [s >= 0 and s % 50 == 0 for s in STEPS]
    assert all(v[1] == 0.5 for v in values)
    bounded = sparsity.ConstantSparsity(0.5, begin_step=0, end_step=50, frequency=50)
    assert dict(zip(STEPS, _values(bounded)))[100][0] is False


@pytest.mark.backend_agnostic
def test_config_round_trip_and_tfmot_config_dict():
    schedule = sparsity.PolynomialDecay(0.0, 0.5, 0, 100, power=2, frequency=5)
    assert sparsity.PolynomialDecay.from_config(schedule.get_config()) == schedule
    tf_style = {
        "class_name": "ConstantSparsity",
        "config": {"target_sparsity": 0.3, "begin_step": 2},
    }
    assert schedules.get(tf_style) == sparsity.ConstantSparsity(0.3, 2)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(initial_sparsity=1.0), "initial_sparsity"),
        (dict(final_sparsity=-0.1), "final_sparsity"),
        (dict(begin_step=-1), "begin_step"),
        (dict(end_step=-1), "end_step"),
        (dict(begin_step=20, end_step=10), "end_step"),
        (dict(frequency=0), "frequency"),
    ],
)
@pytest.mark.backend_agnostic
def test_bad_arguments_name_argument_and_value(kwargs, name):
    args = dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"Received: {name}="):
        sparsity.PolynomialDecay(**args)


@pytest.mark.backend_agnostic
def test_constant_bad_arguments():
    with pytest.raises(ValueError, match="Received: target_sparsity=1.5"):
        sparsity.ConstantSparsity(1.5, 0)
    with pytest.raises(ValueError, match="Received: end_step=-3"):
        sparsity.ConstantSparsity(0.5, 0, end_step=-3)
    with pytest.raises(TypeError, match="Received: pruning_schedule="):
        schedules.get("polynomial")


def test_parity_with_tfmot_and_tfmot_objects_accepted():
    import tensorflow_model_optimization as tfmot

    for ours, theirs in [
        (
            sparsity.PolynomialDecay(0.1, 0.6, 10, 100, frequency=10),
            tfmot.sparsity.keras.PolynomialDecay(0.1, 0.6, 10, 100, frequency=10),
        ),
        (
            sparsity.ConstantSparsity(0.4, 5, 120, frequency=7),
            tfmot.sparsity.keras.ConstantSparsity(0.4, 5, 120, frequency=7),
        ),
    ]:
        for step in STEPS[1:]:
            a_should, a_value = ours(ops.convert_to_tensor(step, "int32"))
            b_should, b_value = theirs(step)
            assert bool(a_should) == bool(b_should.numpy()), step
            np.testing.assert_allclose(float(a_value), float(b_value.numpy()), rtol=1e-6)
        assert schedules.get(theirs) == ours
