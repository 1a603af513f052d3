import numpy as np
import pytest
from keras import ops

from keras_llmopt._src.quantization import calibration as cal
from keras_llmopt._src.quantization import quantizers as q

pytestmark = pytest.mark.backend_agnostic

CLIPPING = ("percentile", "mse", "entropy")


def _int8_mse(values, lo, hi, symmetric=True):
    spec = q.QuantSpec(num_bits=8, symmetric=symmetric, narrow_range=symmetric)
    x = values.astype("float32")
    y = np.asarray(ops.convert_to_numpy(q.fake_quant(x, lo, hi, spec)))
    return float(np.mean((y.astype(np.float64) - values) ** 2))


@pytest.fixture(scope="module")
def outlier_data():
    """A Gaussian bulk (1M values) with 2 huge outliers, streamed in 8 batches."""
    rng = np.random.default_rng(0)
    bulk = rng.normal(size=1_000_000)
    data = bulk.copy()
    data[[123, 654_321]] = [100.0, -100.0]
    return bulk, data


def test_histogram_streaming_rebins_exactly():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=5000) * s for s in (0.1, 1.0, 0.5, 7.0, 3.0)]
    hist = cal.collect_histogram(batches, num_bins=256, signed=True)
    everything = np.concatenate(batches)
    assert hist.total == everything.size
    assert (hist.min, hist.max) == (everything.min(), everything.max())
    assert hist.limit >= np.abs(everything).max()
    reference, _ = np.histogram(everything, bins=hist.edges)
    # Identical but for values lying exactly on an old range's edge (one per growth).
    assert np.abs(hist.counts - reference).sum() <= 2 * len(batches)


def test_magnitude_histogram_matches_folded_signed_one():
    rng = np.random.default_rng(2)
    batches = [rng.standard_t(3, size=4000) for _ in range(4)]
    signed = cal.collect_histogram(batches, num_bins=512, signed=True)
    magnitude = cal.collect_histogram([np.abs(b) for b in batches], num_bins=256)
    folded, width = signed.magnitude_counts()
    assert width == pytest.approx(magnitude.limit / 256)
    np.testing.assert_array_equal(folded, magnitude.counts)


def test_histogram_accepts_keras_tensors_and_extends():
    hist = cal.collect_histogram(ops.convert_to_tensor(np.array([0.0, 0.0], "float32")))
    assert hist.limit == 0.0 and hist.counts[0] == 2  # zeros only: kept in the zero bin
    cal.collect_histogram(ops.convert_to_tensor(np.array([-2.0, 1.0], "float32")), histogram=hist)
    assert hist.total == 4 and hist.limit == 2.0 and hist.counts[0] == 2


def test_minmax_range_is_the_outlier(outlier_data):
    _, data = outlier_data
    hist = cal.collect_histogram(np.split(data, 8))
    assert cal.choose_range(hist, "minmax") == (-100.0, 100.0)


@pytest.mark.parametrize("method", CLIPPING)
def test_clipping_methods_ignore_rare_outliers(outlier_data, method):
    bulk, data = outlier_data
    hist = cal.collect_histogram(np.split(data, 8))
    lo, hi = cal.choose_range(hist, method)
    assert lo == -hi and 3.0 < hi < 30.0, (lo, hi)
    minmax_error = _int8_mse(bulk, -100.0, 100.0)
    assert _int8_mse(bulk, lo, hi) < minmax_error / 10


@pytest.mark.parametrize("method", ("percentile", "entropy"))
def test_percentile_and_entropy_clip_one_in_ten_thousand_outliers(method):
    rng = np.random.default_rng(3)
    bulk = rng.normal(size=200_000)
    data = bulk.copy()
    outliers = rng.choice(data.size, size=20, replace=False)  # 0.01 %
    data[outliers] = rng.choice([-50.0, 50.0], size=20)
    hist = cal.collect_histogram(np.split(data, 4))
    lo, hi = cal.choose_range(hist, method, percentile=99.9)
    assert hi < 15.0
    assert _int8_mse(bulk, lo, hi) < _int8_mse(bulk, -50.0, 50.0) / 10


def test_mse_range_minimises_the_error_of_the_whole_tensor():
    # With 0.01 % outliers, keeping them is cheaper overall than clipping them: mse
    # must find whichever is better for the tensor, which the other methods do not.
    rng = np.random.default_rng(4)
    for count in (0, 20, 2000):
        data = rng.normal(size=200_000)
        data[rng.choice(data.size, size=count, replace=False)] = 40.0
        hist = cal.collect_histogram(data)
        errors = {m: _int8_mse(data, *cal.choose_range(hist, m)) for m in cal.METHODS}
        assert errors["mse"] <= 1.05 * min(errors.values()), (count, errors)


def test_asymmetric_ranges_on_one_sided_data():
    rng = np.random.default_rng(5)
    data = np.maximum(rng.normal(size=300_000), 0.0) * 2.0  # ReLU-like, no negatives
    data[7] = 200.0
    hist = cal.collect_histogram(np.split(data, 3), signed=True)
    assert cal.choose_range(hist, "minmax", symmetric=False) == (0.0, 200.0)
    ranges = {m: cal.choose_range(hist, m, symmetric=False) for m in cal.METHODS}
    for method in ("percentile", "entropy"):
        lo, hi = ranges[method]
        assert lo == 0.0 and 4.0 < hi < 60.0, (method, lo, hi)
        # The whole 8-bit grid serves the positive side: far less error than symmetric.
        sym = cal.choose_range(hist, method, symmetric=True)
        assert _int8_mse(data[8:], lo, hi, symmetric=False) < 0.6 * _int8_mse(data[8:], *sym)
    # One outlier in 300k costs more clipped than kept on a 255-level grid: mse keeps it,
    # and its range is the best of all for the whole tensor.
    errors = {m: _int8_mse(data, *r, symmetric=False) for m, r in ranges.items()}
    assert ranges["mse"][0] == 0.0 and errors["mse"] <= 1.05 * min(errors.values()), errors


def test_choose_range_errors():
    hist = cal.collect_histogram(np.array([1.0, -2.0]))
    with pytest.raises(ValueError, match="Accepted: minmax, percentile, mse, entropy") as info:
        cal.choose_range(hist, "kl")
    assert "method='kl'" in str(info.value)
    with pytest.raises(ValueError, match="signed=True"):
        cal.choose_range(hist, "mse", symmetric=False)
    with pytest.raises(ValueError, match="percentile=0"):
        cal.choose_range(hist, "percentile", percentile=0)
    with pytest.raises(ValueError, match="num_bits=1"):
        cal.choose_range(hist, "entropy", num_bits=1)
    with pytest.raises(ValueError, match="empty"):
        cal.choose_range(cal.Histogram(), "minmax")
    with pytest.raises(TypeError, match="Histogram"):
        cal.choose_range(np.ones(3), "minmax")
    with pytest.raises(ValueError, match="num_bins=30"):
        cal.Histogram(num_bins=30)
    with pytest.raises(ValueError, match="non-finite"):
        cal.collect_histogram(np.array([1.0, np.nan]))
