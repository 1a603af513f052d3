import numpy as np
import pytest
from keras import ops

from keras_llmopt._src.sparsity import masks

pytestmark = pytest.mark.backend_agnostic


def _mask(w, old=None, sparsity=0.5, axes=(0,), **kwargs):
    old = np.ones_like(w) if old is None else old
    m, t = masks.magnitude_mask(w, old, ops.convert_to_tensor(sparsity), axes, **kwargs)
    return ops.convert_to_numpy(m), float(ops.convert_to_numpy(t))


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.9])
def test_exact_count_and_smallest_magnitudes(sparsity):
    w = np.random.RandomState(1).randn(24, 10).astype("float32")
    m, threshold = _mask(w, sparsity=sparsity)
    assert int((m == 0).sum()) == round(sparsity * w.size)
    if sparsity:
        assert np.abs(w[m == 0]).max() <= np.abs(w[m == 1]).min()
        assert threshold == pytest.approx(np.abs(w[m == 0]).max())


def test_exact_count_with_ties_and_monotone():
    w = np.ones((8, 8), "float32")
    m1, _ = _mask(w, sparsity=0.25)
    assert int((m1 == 0).sum()) == 16
    # Later, a previously pruned weight grows large: it stays pruned, sparsity never drops.
    w2 = np.random.RandomState(0).rand(8, 8).astype("float32")
    w2[m1 == 0] = 100.0
    m2, _ = _mask(w2, old=m1, sparsity=0.5)
    assert np.all(m2[m1 == 0] == 0) and int((m2 == 0).sum()) == 32
    m3, _ = _mask(w2, old=m2, sparsity=0.1)
    assert np.array_equal(m3, m2)


def _rank_mask(key, sparsity, min_pruned):
    # The definition: prune the entries ranked lowest, ties broken by index.
    n = min(max(int(np.round(np.float32(sparsity) * np.float32(key.size))), min_pruned), key.size)
    rank = np.argsort(np.argsort(key, kind="stable"), kind="stable")
    return (rank >= n).astype("float32")


@pytest.mark.parametrize("seed", range(6))
def test_exact_mask_is_the_stable_rank_mask_with_ties(seed):
    rng = np.random.RandomState(seed)
    for size in (1, 2, 7, 33):
        for key in (
            rng.randn(size).astype("float32"),
            rng.randint(0, 3, size).astype("float32"),  # many ties, at the threshold too
            np.where(rng.rand(size) < 0.4, -1.0, rng.randint(0, 3, size)).astype("float32"),
        ):
            already = int((key < 0).sum())
            for sparsity in (0.0, 0.1, 0.5, 0.9, 0.99):
                for min_pruned in (already, size):
                    got = masks._exact_mask(ops.convert_to_tensor(key), sparsity, min_pruned)
                    np.testing.assert_array_equal(
                        ops.convert_to_numpy(got),
                        _rank_mask(key, sparsity, min_pruned),
                        err_msg=f"{key} {sparsity} {min_pruned}",
                    )


def test_two_four_on_every_group_along_input_dim():
    w = np.random.RandomState(2).randn(16, 6).astype("float32")  # Dense (in=16, out=6)
    m, _ = _mask(w, sparsity=0.0, m_by_n=(2, 4))
    groups = m.T.reshape(6, 4, 4)
    assert np.all(groups.sum(-1) == 2)
    kept = np.abs(w.T.reshape(6, 4, 4)) * groups.astype(bool)
    dropped_max = np.where(groups == 0, np.abs(w.T.reshape(6, 4, 4)), 0).max(-1)
    assert np.all(np.where(groups == 1, kept, np.inf).min(-1) >= dropped_max)


def test_block_sparsity_prunes_whole_blocks():
    w = np.random.RandomState(3).randn(8, 6).astype("float32")  # view (6, 8)
    m, _ = _mask(w, sparsity=0.5, block_size=(2, 4), block_pooling_type="MAX")
    blocks = m.T.reshape(3, 2, 2, 4).transpose(0, 2, 1, 3).reshape(6, 8)
    assert set(np.unique(blocks.sum(-1))) <= {0.0, 8.0}
    assert m.mean() == 0.5


def test_einsum_view_groups_input_axes_last():
    spec = masks.view_spec((2, 16, 64), (0, 1))  # attention output (heads, head_dim, d)
    assert (spec.rows, spec.cols) == (64, 32)
    x = np.arange(2 * 16 * 64, dtype="float32").reshape(2, 16, 64)
    back = ops.convert_to_numpy(masks.from_view(masks.to_view(x, spec), spec))
    np.testing.assert_array_equal(back, x)


def test_bad_settings_errors_name_values():
    with pytest.raises(ValueError, match="Received: block_pooling_type='MEAN'"):
        masks.check_pooling("MEAN")
    with pytest.raises(ValueError, match=r"Received: sparsity_m_by_n=\(4, 2\)"):
        masks.check_m_by_n((4, 2))
    with pytest.raises(ValueError, match="Received: block_size=3"):
        masks.check_block_size(3)
    with pytest.raises(ValueError, match="layer 'd' kernel.*not divisible by n=4"):
        masks.validate_settings((6, 3), (0,), (1, 1), "AVG", (2, 4), "layer 'd' kernel")
    with pytest.raises(ValueError, match="does not divide.*layer 'd' kernel"):
        masks.validate_settings((6, 3), (0,), (2, 4), "AVG", None, "layer 'd' kernel")
