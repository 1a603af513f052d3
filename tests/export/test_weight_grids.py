"""Weight grids: validated on construction, written into a file exactly, refused when absent."""

import numpy as np
import pytest

from keras_llmopt._src.export import weight_grids
from keras_llmopt._src.export.weight_grids import WeightGrid

pytestmark = pytest.mark.backend_agnostic


def _grid(name, seed, out=64, features=32, bits=8):
    rng = np.random.default_rng(seed)
    limit = 2 ** (bits - 1) - 1
    codes = rng.integers(-limit, limit + 1, (out, features)).astype(np.int8)
    codes[:, 0] = limit // 2  # most rows' largest code below the limit: re-rounded if not kept
    scales = rng.uniform(0.01, 0.1, (out, 1)).astype(np.float16).astype(np.float32)
    return WeightGrid(name, codes, scales, bits)


def _dynamic_int8(kernels, factor=1.0):
    """A dynamic-range int8 file of ``x @ (factor * k).T`` for each ``(out, in)`` kernel."""
    import tensorflow as tf

    spec = [tf.TensorSpec((1, kernels[0].shape[1]))]
    fn = tf.function(lambda x: [x @ (factor * k).T for k in kernels], input_signature=spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


@pytest.mark.parametrize(
    "codes, scales, bits, group, message",
    [
        (np.ones((2, 4), int), np.ones((2, 1)), 3, -1, r"`bits` must be 4 or 8.*bits=3"),
        (np.ones((2, 4), np.float32), np.ones((2, 1)), 8, -1, r"2-D integers.*float32 \(2, 4\)"),
        (np.full((2, 4), 8), np.ones((2, 1)), 4, -1, r"within ±7.*\[8, 8\]"),
        (np.ones((2, 6), int), np.ones((2, 2)), 4, 4, r"divide in=6.*4"),
        (np.ones((2, 4), int), np.ones((2, 1)), 4, 2, r"shape \(2, 2\).*\(2, 1\)"),
        (np.ones((2, 4), int), np.full((2, 1), 0.1), 4, -1, "exactly representable in float16"),
        (np.ones((2, 4), int), np.full((2, 1), -1.0), 4, -1, "non-negative"),
    ],
    ids=["bits", "float codes", "range", "group", "scales shape", "float16", "negative"],
)
def test_a_malformed_grid_is_refused_naming_it(codes, scales, bits, group, message):
    with pytest.raises(ValueError, match=r"WeightGrid 'layer_3': .*" + message):
        WeightGrid("layer_3", np.asarray(codes), np.asarray(scales), bits, group)


def test_a_grid_is_read_only_and_dequantizes_per_group():
    grid = WeightGrid("g", np.array([[1, 2, 3, 4]]), np.array([[0.5, 2.0]]), 4, 2)
    np.testing.assert_array_equal(grid.dequantize(), [[0.5, 1.0, 6.0, 8.0]])
    with pytest.raises(ValueError, match="read-only"):
        grid.codes[0, 0] = 0


def test_the_converter_rerounds_a_grid_and_keep_grids_restores_it_exactly():
    grids = [_grid("first", 0), _grid("second", 1)]
    content = _dynamic_int8([g.dequantize() for g in grids])
    with pytest.raises(ValueError, match="is not kept"):
        weight_grids.check_grids_kept(content, grids)
    kept = weight_grids.keep_grids(content, grids)
    weight_grids.check_grids_kept(kept, grids)
    assert len(kept) == len(content)
    stored = sorted(weight_grids.stored_weights(kept).values(), key=lambda w: w[1].sum())
    expected = sorted(grids, key=lambda g: g.scales.sum())
    for (codes, scales, block), grid in zip(stored, expected):
        np.testing.assert_array_equal(codes, grid.codes)
        np.testing.assert_array_equal(scales, grid.scales)
        assert block == -1


def test_a_constant_folded_into_the_weight_keeps_the_codes_with_scaled_scales():
    grid = _grid("query", 2)
    kept = weight_grids.keep_grids(_dynamic_int8([grid.dequantize()], factor=0.125), [grid])
    weight_grids.check_grids_kept(kept, [grid])
    ((codes, scales, _),) = weight_grids.stored_weights(kept).values()
    np.testing.assert_array_equal(codes, grid.codes)
    np.testing.assert_array_equal(scales, grid.scales * np.float32(0.125))


def test_near_equal_grids_each_take_their_nearest_weight():
    first = _grid("first", 3)
    codes = first.codes.copy()
    codes[:, 1] = np.clip(codes[:, 1] + 1, -127, 127)  # one code apart in one column
    second = WeightGrid("second", codes, first.scales, 8)
    kept = weight_grids.keep_grids(
        _dynamic_int8([first.dequantize(), second.dequantize()]),
        [
            second,
            first,
        ],
    )
    weight_grids.check_grids_kept(kept, [first, second])


def test_a_grid_missing_from_the_file_is_named():
    present, absent = _grid("present", 4), _grid("absent", 5, out=48)
    with pytest.raises(ValueError, match="absent"):
        weight_grids.keep_grids(_dynamic_int8([present.dequantize()]), [present, absent])


def test_the_mode_must_store_the_grids_bits():
    four = WeightGrid("w4", np.ones((1, 2), np.int8), np.ones((1, 1)), 4)
    weight_grids.check_mode([four], "int4")
    with pytest.raises(
        ValueError, match=r"cannot be kept with quantization='dynamic_int8'.*'int4'"
    ):
        weight_grids.check_mode([four], "dynamic_int8")
    with pytest.raises(ValueError, match="use 'dynamic_int8'"):
        weight_grids.check_mode([_grid("w8", 6)], "int8")
    with pytest.raises(TypeError, match="WeightGrid objects"):
        weight_grids.check_mode([np.ones(2)], "int4")
