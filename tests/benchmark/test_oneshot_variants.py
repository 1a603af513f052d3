"""The benchmark's one-shot rows on the tiny GPT: built, verified, what their names say."""

import pytest

from keras_llmopt import benchmark
from keras_llmopt._src.benchmark import oneshot_variants
from keras_llmopt._src.export import weight_grids

ROWS = ("klo_sparsegpt_2of4", "klo_gptq_int4", "klo_smoothquant_int8_ptq", "aeq_rtn_int4")


@pytest.fixture(scope="module")
def rows(trained_tiny, tiny_corpus, tmp_path_factory):
    result = benchmark.run_benchmark(
        trained_tiny,
        tiny_corpus,
        tmp_path_factory.mktemp("oneshot_bench"),
        variants=list(ROWS),
        eval_windows=16,
        latency_warmup=0,
        latency_repeats=1,
        verbose=0,
        progress=False,
    )
    return {row["variant"]: row for row in result.rows}


def test_every_one_shot_row_is_registered_and_named_ours():
    from keras_llmopt._src.benchmark import report, variants

    for name in oneshot_variants.VARIANTS:
        assert name in variants.VARIANTS
        assert report.is_ours(name) == name.startswith("klo_"), name


def test_one_shot_rows_are_verified_files_with_calibration_seconds(rows):
    fp32 = rows["tflite_fp32"]
    for name in ROWS:
        row = rows[name]
        assert row["error"] is None, row["error"]
        assert row["verified"] and row["runtime"] == "litert", row
        assert row["delta_bpb"] < 0.1, row
    for name in ("klo_sparsegpt_2of4", "klo_gptq_int4", "klo_smoothquant_int8_ptq"):
        assert rows[name]["calibration_seconds"] > 0, name
        assert any("one-shot" in note for note in rows[name]["notes"]), rows[name]["notes"]
    assert rows["klo_sparsegpt_2of4"]["size_bytes"] == pytest.approx(fp32["size_bytes"], rel=0.01)
    assert rows["klo_sparsegpt_2of4"]["size_gzip_bytes"] < 0.8 * fp32["size_gzip_bytes"]
    assert rows["klo_gptq_int4"]["size_bytes"] < 0.4 * fp32["size_bytes"]
    assert rows["klo_smoothquant_int8_ptq"]["size_bytes"] < 0.4 * fp32["size_bytes"]


def test_the_gptq_row_holds_gptqs_grid_and_rtn_does_not(rows):
    gptq = open(rows["klo_gptq_int4"]["artifact"], "rb").read()
    rtn = open(rows["aeq_rtn_int4"]["artifact"], "rb").read()
    stored_gptq = sorted(weight_grids.stored_weights(gptq).values(), key=lambda w: w[0].shape)
    stored_rtn = sorted(weight_grids.stored_weights(rtn).values(), key=lambda w: w[0].shape)
    assert stored_gptq and len(stored_gptq) == len(stored_rtn)
    size = 64  # the largest of GROUP_SIZES dividing the tiny GPT's widths, 64 and 256
    # Same layout (codes, blocks), other codes: not the quantizer's own rounding.
    for (codes, _, block), (rtn_codes, _, rtn_block) in zip(stored_gptq, stored_rtn):
        assert codes.shape == rtn_codes.shape and block == rtn_block
        assert codes.min() >= -8 and codes.max() <= 7
    assert sum(int((a[0] != b[0]).sum()) for a, b in zip(stored_gptq, stored_rtn)) > 0
    assert {block for _, _, block in stored_gptq} == {size}
