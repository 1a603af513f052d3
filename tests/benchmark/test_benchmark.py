import json

import numpy as np
import pytest

from keras_llmopt import benchmark, reference
from keras_llmopt._src.benchmark import report
from keras_llmopt._src.benchmark import twin as twin_lib
from keras_llmopt._src.benchmark import variants as variants_lib


def _broken(ctx):
    raise RuntimeError("this variant cannot be built")


@pytest.fixture(scope="module")
def bench(trained_tiny, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setitem(variants_lib.VARIANTS, "klo_broken", _broken)
    try:
        result = benchmark.run_benchmark(
            trained_tiny,
            tiny_corpus,
            out,
            variants="tflite_dynamic_int8,keras_int8,onnx_dynamic_int8,klo_broken",
            eval_windows=8,
            latency_warmup=1,
            latency_repeats=3,
            verbose=0,
            progress=False,
        )
    finally:
        mp.undo()
    return out, result


def test_benchmark_json_schema(bench):
    out, result = bench
    data = json.loads((out / "benchmark.json").read_text())
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["python"]
    assert data["packages"]["keras"] and data["packages"]["tensorflow"]
    names = [row["variant"] for row in data["rows"]]
    # The ratio references come first, the requested variants keep their order.
    assert names == [
        "keras_fp32",
        "tflite_fp32",
        "tflite_dynamic_int8",
        "keras_int8",
        "onnx_dynamic_int8",
        "klo_broken",
    ]
    for row in data["rows"]:
        assert set(row) == set(benchmark.ROW_FIELDS)
    assert data["settings"]["eval_windows"] == 8


def test_benchmark_ratios_and_measures(bench):
    _, result = bench
    fp32 = result.row("tflite_fp32")
    assert fp32["size_ratio"] == 1.0 and fp32["latency_ratio_1t"] == 1.0
    assert result.row("keras_fp32")["delta_bpb"] == 0.0
    # Same validation windows: the fp32 artifact reproduces the Keras model's bpb.
    assert fp32["delta_bpb"] == pytest.approx(0.0, abs=1e-4)
    assert fp32["verified"] is True and fp32["runtime"] == "litert"
    dyn = result.row("tflite_dynamic_int8")
    assert dyn["size_ratio"] < 0.5 and abs(dyn["delta_bpb"]) < 0.05
    for key in ("latency_ms_1t", "latency_ms_2t", "latency_ratio_2t"):
        assert dyn[key] > 0
    onnx = result.row("onnx_dynamic_int8")
    assert onnx["runtime"] == "onnxruntime" and onnx["size_ratio"] < 0.6
    keras_int8 = result.row("keras_int8")
    assert keras_int8["runtime"] == "keras" and keras_int8["latency_ms_keras"] > 0
    assert keras_int8["size_bytes"] < result.row("keras_fp32")["size_bytes"]


def test_failed_variant_keeps_its_row(bench):
    _, result = bench
    row = result.row("klo_broken")
    assert row["error"] == "RuntimeError: this variant cannot be built"
    assert row["bpb"] is None and row["size_bytes"] is None


def test_unknown_variant_and_bad_settings(trained_tiny, tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"unknown variants.*\['tflite_int3'\]"):
        benchmark.run_benchmark(trained_tiny, tiny_corpus, tmp_path, variants=["tflite_int3"])
    with pytest.raises(ValueError, match="latency_repeats"):
        benchmark.run_benchmark(trained_tiny, tiny_corpus, tmp_path, latency_repeats=0)


def test_tf_keras_twin_reproduces_the_model(trained_tiny):
    config = reference.GPTConfig.preset("tiny")
    twin = twin_lib.twin_of(trained_tiny, config)
    tokens = np.random.default_rng(3).integers(0, 256, (2, 16)).astype("int32")
    np.testing.assert_allclose(
        twin.predict_on_batch(tokens), trained_tiny.predict_on_batch(tokens), atol=1e-4
    )


def test_pareto_front_and_report_files(bench, tmp_path):
    _, result = bench
    front = report.pareto_front(result.rows)
    assert "tflite_dynamic_int8" in front or "onnx_dynamic_int8" in front
    assert "klo_broken" not in front
    sized = {r["variant"]: r for r in result.rows if r["size_bytes"]}
    for name in front:  # nothing is both smaller and better than a front member
        row = sized[name]
        assert not any(
            o["size_bytes"] < row["size_bytes"] and o["bpb"] < row["bpb"] for o in sized.values()
        )
    paths = report.write_report(result, tmp_path / "rep", extra={"wall_time_s": 1.0})
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| tflite_dynamic_int8 |" in text and "klo_broken" in text
    assert (tmp_path / "rep" / "size_vs_bpb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(open(paths["json"]).read())
    assert data["wall_time_s"] == 1.0 and data["pareto_front"] == front
