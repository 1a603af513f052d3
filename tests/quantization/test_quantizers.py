import keras
import numpy as np
import pytest
from keras import ops

from keras_llmopt._src.quantization import observers
from keras_llmopt._src.quantization import quantizers as q

agnostic = pytest.mark.backend_agnostic
ON_TF = keras.backend.backend() == "tensorflow"


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _grads(fn, *args):
    """Gradients of sum(fn(*args)) with respect to every argument, on the current backend."""
    args = [ops.convert_to_tensor(np.asarray(a, "float32")) for a in args]
    if keras.backend.backend() == "jax":
        import jax

        return [
            np.asarray(g)
            for g in jax.grad(lambda *a: ops.sum(fn(*a)), argnums=tuple(range(len(args))))(*args)
        ]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        for a in args:
            tape.watch(a)
        total = ops.sum(fn(*args))
    return [np.asarray(g) for g in tape.gradient(total, args)]


# --- QuantSpec --------------------------------------------------------------------------------


@agnostic
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_bits": 1}, "num_bits=1"),
        ({"num_bits": 17}, "num_bits=17"),
        ({"num_bits": True}, "num_bits=True"),
        ({"symmetric": "yes"}, "symmetric='yes'"),
        ({"axis": "last"}, "axis='last'"),
        ({"axis": (1, 1)}, "axis=(1, 1)"),
        ({"group_size": 0}, "group_size=0"),
        ({"axis": 0, "group_size": 32, "group_axis": 0}, "group_axis=0"),
    ],
)
def test_spec_rejects_bad_values_with_received(kwargs, fragment):
    with pytest.raises(ValueError, match="Received") as info:
        q.QuantSpec(**kwargs)
    assert fragment in str(info.value)


@agnostic
def test_spec_config_round_trip_and_code_ranges():
    spec = q.QuantSpec(num_bits=4, symmetric=False, narrow_range=False, axis=(1, 2))
    assert q.QuantSpec.from_config(spec.get_config()) == spec
    assert (spec.qmin, spec.qmax) == (-8, 7)
    assert (q.QuantSpec(num_bits=8).qmin, q.QuantSpec(num_bits=8).qmax) == (-127, 127)
    assert q.QuantSpec(num_bits=16).storage_dtype == "int16"


# --- scale / zero point and fake quant --------------------------------------------------------


@agnostic
def test_symmetric_int8_has_zero_point_zero_and_narrow_range():
    spec = q.QuantSpec(num_bits=8, symmetric=True, narrow_range=True)
    scale, zp = q.compute_scale_zero_point(-0.5, 2.54, spec)
    assert int(_np(zp)) == 0
    np.testing.assert_allclose(_np(scale), 2.54 / 127, rtol=1e-6)
    y = _np(q.fake_quant(np.array([-10.0, 10.0], "float32"), -0.5, 2.54, spec))
    np.testing.assert_allclose(y, [-2.54, 2.54], rtol=1e-6)  # codes -127 and 127


@agnostic
@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize("num_bits", [4, 8])
def test_asymmetric_ranges_represent_zero_exactly(narrow_range, num_bits):
    rng = np.random.default_rng(num_bits)
    spec = q.QuantSpec(num_bits=num_bits, symmetric=False, narrow_range=narrow_range)
    for _ in range(20):
        lo, hi = -rng.uniform(0.01, 3.0), rng.uniform(0.01, 3.0)
        scale, zp = q.compute_scale_zero_point(lo, hi, spec)
        assert spec.qmin <= int(_np(zp)) <= spec.qmax
        x = np.array([0.0, lo, hi, rng.uniform(lo, hi)], "float32")
        y = _np(q.fake_quant(x, lo, hi, spec))
        assert y[0] == 0.0
        codes = y / float(_np(scale)) + float(_np(zp))
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the grid
        assert np.all(np.abs(y - x) <= float(_np(scale)) * 0.5 + 1e-6)


@agnostic
def test_fake_quant_is_idempotent_and_per_channel_ranges_apply_per_column():
    spec = q.QuantSpec(num_bits=8, symmetric=False, narrow_range=False, axis=-1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32") * np.array([0.1, 1.0, 10.0], "float32")
    lo, hi = x.min(axis=0), x.max(axis=0)
    y = _np(q.fake_quant(x, lo, hi, spec))
    np.testing.assert_allclose(_np(q.fake_quant(y, lo, hi, spec)), y, atol=1e-6)
    err = np.abs(y - x).max(axis=0)
    assert err[0] < err[1] < err[2]  # each column used its own scale
    assert np.all(err <= (hi - lo) / 255 * 0.51)


@agnostic
def test_fake_quant_straight_through_gradient_is_clipped():
    spec = q.QuantSpec(num_bits=8, symmetric=False, narrow_range=False)
    x = np.array([-3.0, -1.0, -0.2, 0.0, 0.7, 1.0, 2.5], "float32")
    gx, gmin, gmax = _grads(lambda a, lo, hi: q.fake_quant(a, lo, hi, spec), x, -1.0, 1.0)
    _, nmin, nmax = (_np(v) for v in q._nudged_range(-1.0, 1.0, spec))
    inside = (x >= nmin) & (x <= nmax)
    np.testing.assert_array_equal(gx, inside.astype("float32"))
    assert float(gmin) == float(np.sum(x < nmin))
    assert float(gmax) == float(np.sum(x > nmax))


@agnostic
def test_fake_quant_trains_inside_a_compiled_model():
    spec = q.QuantSpec(num_bits=4, symmetric=False, narrow_range=False)

    class FQ(keras.layers.Layer):
        def call(self, x):
            return q.fake_quant(x, -1.0, 1.0, spec)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), FQ()])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32") * 0.3
    before = model.evaluate(x, x, verbose=0)
    model.fit(x, x, epochs=20, batch_size=16, verbose=0)
    assert model.evaluate(x, x, verbose=0) < 0.5 * before


@agnostic
def test_fake_quant_rejects_misshaped_ranges():
    spec = q.QuantSpec(axis=-1)
    with pytest.raises(ValueError, match=r"Received: min_value.shape=\(4,\)"):
        q.fake_quant(np.zeros((2, 3), "float32"), np.zeros(4), np.ones(4), spec)
    with pytest.raises(ValueError, match="out of range"):
        q.fake_quant(np.zeros((3,), "float32"), np.zeros(3), np.ones(3), q.QuantSpec(axis=2))


# --- weights ----------------------------------------------------------------------------------


@agnostic
@pytest.mark.parametrize(
    "spec",
    [
        q.QuantSpec(num_bits=8),
        q.QuantSpec(num_bits=8, axis=-1),
        q.QuantSpec(num_bits=8, symmetric=False, narrow_range=False, axis=-1),
        q.QuantSpec(num_bits=4, axis=-1),
        q.QuantSpec(num_bits=4, axis=-1, group_size=16, group_axis=0),
        q.QuantSpec(num_bits=4, symmetric=False, narrow_range=False, group_size=8),
        q.QuantSpec(num_bits=8, axis=(1, 2)),
    ],
    ids=[
        "i8-tensor",
        "i8-channel",
        "u8-channel",
        "i4-channel",
        "i4-group16",
        "u4-group8",
        "i8-2ax",
    ],
)
def test_weight_round_trip_error_is_at_most_half_a_step(spec):
    rng = np.random.default_rng(1)
    shape = (64, 4, 6) if spec.axis == (1, 2) else (64, 24)
    w = rng.normal(size=shape).astype("float32") * rng.uniform(0.01, 2.0, size=shape[-1])
    codes, scale, zp = q.quantize_weights(w, spec)
    codes_np = _np(codes)
    assert codes_np.dtype == np.int8 and codes_np.shape == w.shape
    assert codes_np.min() >= spec.qmin and codes_np.max() <= spec.qmax
    full_scale = _np(q._to_keepdims(scale, w.shape, spec, "scale")) * np.ones_like(w)
    err = np.abs(_np(q.dequantize(codes, scale, zp, spec)) - w)
    assert np.all(err <= full_scale / 2 * (1 + 1e-5) + 1e-7)
    # The same values come out of the QAT path.
    np.testing.assert_allclose(
        _np(q.fake_quant_weights(w, spec)), _np(q.dequantize(codes, scale, zp, spec)), atol=1e-6
    )


@agnostic
def test_group_wise_uses_one_range_per_group():
    w = np.ones((32, 2), "float32")
    w[:16] *= 0.01  # first group tiny, second large
    spec = q.QuantSpec(num_bits=4, axis=-1, group_size=16, group_axis=0)
    codes, scale, _ = q.quantize_weights(w, spec)
    assert tuple(_np(scale).shape) == (2, 2)
    np.testing.assert_allclose(_np(q.dequantize(codes, scale, 0 * scale, spec)), w, rtol=1e-5)
    with pytest.raises(ValueError, match="group_size=16 does not divide axis 0"):
        q.quantize_weights(np.ones((24, 2), "float32"), spec)


# --- parity with TensorFlow's own fake-quant ops (TensorFlow only) --------------------------


def _assert_same_codes(ours, theirs, lo, hi, spec):
    """Same integer code everywhere; values equal up to TF's fused multiply-add (last bit)."""
    scale, nmin, _ = (_np(v) for v in q._nudged_range(lo, hi, spec))
    codes = lambda v: np.round((v - nmin) / scale)  # noqa: E731
    np.testing.assert_array_equal(codes(ours), codes(theirs), err_msg=f"range {(lo, hi)}")
    bound = 4 * np.finfo("float32").eps * np.maximum(np.abs(lo), np.abs(hi))
    assert np.all(np.abs(ours - theirs) <= bound), f"range {(lo, hi)}"


@pytest.mark.skipif(not ON_TF, reason="compares against tf.quantization ops")
@pytest.mark.parametrize("narrow_range", [False, True])
@pytest.mark.parametrize("num_bits", [4, 8])
def test_matches_tf_fake_quant_with_min_max_vars(narrow_range, num_bits):
    import tensorflow as tf

    rng = np.random.default_rng(num_bits + narrow_range)
    spec = q.QuantSpec(num_bits=num_bits, symmetric=False, narrow_range=narrow_range)
    ranges = [(-1.0, 1.0), (-0.3, 2.7), (0.2, 1.5), (-4.0, -0.5)]
    ranges += [tuple(sorted(rng.normal(size=2) * 3)) for _ in range(30)]
    for lo, hi in ranges:
        lo, hi = float(lo), float(hi)
        x = (rng.normal(size=512) * max(abs(lo), abs(hi)) * 1.3).astype("float32")
        ours = _np(q.fake_quant(x, lo, hi, spec))
        theirs = tf.quantization.fake_quant_with_min_max_vars(
            x, lo, hi, num_bits=num_bits, narrow_range=narrow_range
        ).numpy()
        _assert_same_codes(ours, theirs, lo, hi, spec)
        # Gradients too (x, min, max).
        ours_g = _grads(lambda a, b, c: q.fake_quant(a, b, c, spec), x, lo, hi)
        theirs_g = tf.quantization.fake_quant_with_min_max_vars_gradient(
            tf.ones_like(x),
            x,
            np.float32(lo),
            np.float32(hi),
            num_bits=num_bits,
            narrow_range=narrow_range,
        )
        for a, b in zip(ours_g, theirs_g):
            np.testing.assert_allclose(a, b.numpy(), atol=1e-4)


@pytest.mark.skipif(not ON_TF, reason="compares against tf.quantization ops")
@pytest.mark.parametrize("narrow_range", [False, True])
def test_matches_tf_per_channel_and_symmetric(narrow_range):
    import tensorflow as tf

    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 5)).astype("float32") * np.array([0.01, 0.1, 1, 10, 100], "float32")
    lo = np.minimum(x.min(axis=0) * 0.8, 0).astype("float32")
    hi = np.maximum(x.max(axis=0) * 0.8, 0).astype("float32")
    spec = q.QuantSpec(num_bits=8, symmetric=False, narrow_range=narrow_range, axis=-1)
    theirs = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, lo, hi, num_bits=8, narrow_range=narrow_range
    ).numpy()
    _assert_same_codes(_np(q.fake_quant(x, lo, hi, spec)), theirs, lo, hi, spec)
    # Symmetric per-channel = TF with the range [-r, r] (narrow) / [-128 s, 127 s] (wide).
    sym = q.QuantSpec(num_bits=8, symmetric=True, narrow_range=narrow_range, axis=-1)
    r = np.maximum(np.abs(lo), np.abs(hi))
    s = r / 127
    tf_lo, tf_hi = (-r, r) if narrow_range else (-128 * s, 127 * s)
    theirs = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, tf_lo, tf_hi, num_bits=8, narrow_range=narrow_range
    ).numpy()
    ours = _np(q.fake_quant(x, lo, hi, sym))
    assert np.all(np.abs(ours - theirs) <= 4 * np.finfo("float32").eps * r)


# --- observers --------------------------------------------------------------------------------


@agnostic
def test_moving_min_max_first_batch_initialises_then_averages():
    obs = observers.MovingMinMax(momentum=0.9, name="act")
    obs.build()
    np.testing.assert_allclose(_np(obs.range()[0]), observers.INITIAL_MIN)
    lo, hi = obs.update(np.array([1.0, 3.0], "float32"))  # range includes 0
    assert (float(_np(lo)), float(_np(hi))) == (0.0, 3.0)
    lo, hi = obs.update(np.array([-2.0, 1.0], "float32"))
    np.testing.assert_allclose([_np(lo), _np(hi)], [-0.2, 2.8], rtol=1e-6)
    np.testing.assert_allclose(_np(obs.min), -0.2, rtol=1e-6)
    assert int(_np(obs.count)) == 2


@agnostic
def test_min_max_observer_per_channel():
    obs = observers.MinMax(axis=-1)
    obs.build(input_shape=(None, 3))
    obs.update(np.array([[1.0, -1.0, 0.5]], "float32"))
    lo, hi = obs.update(np.array([[-2.0, 0.5, 0.25]], "float32"))
    np.testing.assert_allclose(_np(lo), [-2.0, -1.0, 0.0])
    np.testing.assert_allclose(_np(hi), [1.0, 0.5, 0.5])


@agnostic
def test_observer_errors():
    with pytest.raises(ValueError, match="momentum=1.0"):
        observers.MovingMinMax(momentum=1.0)
    with pytest.raises(ValueError, match="axis='x'"):
        observers.MinMax(axis="x")
    with pytest.raises(ValueError, match="input_shape"):
        observers.MinMax(axis=-1).build()
    with pytest.raises(ValueError, match="not built"):
        observers.MinMax().update(np.zeros(2, "float32"))
    obs = observers.MovingMinMax(momentum=0.5, axis=1, name="n")
    assert observers.MovingMinMax.from_config(obs.get_config()).get_config() == obs.get_config()


@agnostic
def test_observer_updates_inside_compiled_fit_and_is_saved(tmp_path):
    @keras.saving.register_keras_serializable("test_quantizers")
    class ObservedFQ(keras.layers.Layer):
        def build(self, input_shape):
            self.observer = observers.MovingMinMax(momentum=0.5, name="act")
            self.observer.build(self, input_shape)

        def call(self, x, training=False):
            spec = q.QuantSpec(num_bits=8, symmetric=False, narrow_range=False)
            if training:
                lo, hi = self.observer.update(x)
            else:
                lo, hi = self.observer.range()
            return q.fake_quant(x, lo, hi, spec)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), ObservedFQ()])
    model.compile(optimizer="adam", loss="mse", jit_compile=True)
    x = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")
    model.fit(x, x, batch_size=16, epochs=2, verbose=0)
    layer = model.layers[-1]
    assert int(_np(layer.observer.count)) == 6  # one update per training step
    lo, hi = float(_np(layer.observer.min)), float(_np(layer.observer.max))
    assert lo < 0 < hi and (lo, hi) != (observers.INITIAL_MIN, observers.INITIAL_MAX)
    path = str(tmp_path / "observed.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(restored.layers[-1].observer.max), hi)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0))
