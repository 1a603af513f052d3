import copy
import json
import types

import numpy as np
import pytest

from keras_llmopt import benchmark, reference
from keras_llmopt._src.benchmark import measure, report
from keras_llmopt._src.benchmark import run as run_lib
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


# --- interleaved latency timing ------------------------------------------------------


@pytest.mark.backend_agnostic
def test_interleaved_rounds_run_every_function_once_per_round_in_a_shuffled_order():
    log = []
    names = ["a", "b", "c", "d", "e"]
    functions = {n: (lambda n=n: log.append(n)) for n in names}
    times = measure.interleaved_rounds(functions, rounds=6, warmup=2, seed=3)
    warm, timed = log[: 2 * len(names)], log[2 * len(names) :]
    assert warm == [n for n in names for _ in range(2)]
    blocks = [timed[i : i + len(names)] for i in range(0, len(timed), len(names))]
    assert len(blocks) == 6 and all(sorted(b) == names for b in blocks)  # round-robin
    assert len({tuple(b) for b in blocks}) > 1  # the order changes between rounds
    assert all(len(t) == 6 and all(w >= 0 and c >= 0 for w, c in t) for t in times.values())
    log.clear()
    measure.interleaved_rounds(functions, rounds=6, warmup=2, seed=3)
    assert log[2 * len(names) :] == timed  # a fixed seed gives the same orders
    with pytest.raises(ValueError, match="rounds"):
        measure.interleaved_rounds(functions, rounds=0)


@pytest.mark.backend_agnostic
def test_spread_reports_median_iqr_and_range_in_percent():
    stats = measure.spread([10.0, 10.0, 10.0, 20.0])
    assert stats["median"] == 10.0 and stats["n"] == 4
    assert stats["iqr_pct"] == pytest.approx(25.0)  # q25 = 10, q75 = 12.5
    assert stats["range_pct"] == pytest.approx(100.0)


@pytest.mark.backend_agnostic
def test_latencies_of_all_variants_are_timed_together(monkeypatch):
    log = []

    def fake_functions(built, sequence_length, threads=(1, 2)):
        if built.path is None:
            return {"latency_ms_keras": lambda: log.append((built.notes[0], "keras"))}
        return {f"latency_ms_{n}t": (lambda n=n: log.append((built.notes[0], n))) for n in threads}

    monkeypatch.setattr(measure, "latency_functions", fake_functions)
    builts = {
        "a": variants_lib.Built(path="a.tflite", notes=("a",)),
        "b": variants_lib.Built(path="b.onnx", notes=("b",)),
        "k": variants_lib.Built(model=object(), notes=("k",)),
    }
    rows = [{"variant": n} for n in ("a", "b", "k", "failed")]
    ctx = types.SimpleNamespace(sequence_length=8)
    run_lib._time_latencies(rows, builts, ctx, warmup=0, repeats=4, seed=0)
    keys = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("k", "keras")]
    assert len(log) == 4 * len(keys)
    for i in range(4):  # every round runs every artifact and setting once
        assert sorted(log[i * 5 : (i + 1) * 5], key=str) == sorted(keys, key=str)
    by_name = {r["variant"]: r for r in rows}
    for name in ("a", "b"):
        for n in ("1t", "2t"):
            assert by_name[name][f"latency_ms_{n}"] > 0
            assert by_name[name][f"latency_iqr_pct_{n}"] >= 0
    assert by_name["k"]["latency_ms_keras"] > 0 and "latency_ms_1t" not in by_name["k"]
    assert "latency_ms_1t" not in by_name["failed"]


def test_benchmark_rows_have_latency_spreads(bench):
    _, result = bench
    for name in ("tflite_fp32", "tflite_dynamic_int8", "onnx_dynamic_int8"):
        row = result.row(name)
        for n in ("1t", "2t"):
            assert row[f"latency_ms_{n}"] > 0 and row[f"latency_iqr_pct_{n}"] >= 0
    keras_int8 = result.row("keras_int8")
    assert keras_int8["latency_ms_keras"] > 0 and keras_int8["latency_iqr_pct_keras"] >= 0
    # One evaluation set for every row, recorded in the settings.
    sets = {r["eval_set"] for r in result.rows if r["bpb"] is not None}
    assert sets == {result.settings["eval_set"]} and result.settings["eval_set"].startswith("8x")


def test_rows_on_different_windows_are_refused():
    rows = [{"variant": "a", "eval_set": "8x64:aa"}, {"variant": "b", "eval_set": "16x64:bb"}]
    with pytest.raises(RuntimeError, match="different validation windows"):
        run_lib._check_eval_set(rows)
    assert run_lib._check_eval_set(rows[:1] + [{"variant": "c"}]) == "8x64:aa"


# --- the matched control ---------------------------------------------------------------


@pytest.mark.backend_agnostic
def test_delta_vs_control_is_computed_from_the_control_row():
    rows = [
        {"variant": "keras_fp32", "bpb": 2.0},
        {"variant": "tflite_fp32", "bpb": 2.0, "size_bytes": 100},
        {"variant": "dense_finetuned_fp32", "bpb": 1.9, "finetuned": True},
        {"variant": "klo_x", "bpb": 1.95, "finetuned": True},
        {"variant": "tflite_dynamic_int8", "bpb": 2.01},
        {"variant": "klo_failed", "bpb": None, "finetuned": True},
    ]
    run_lib._ratios(rows)
    by_name = {r["variant"]: r for r in rows}
    assert by_name["klo_x"]["delta_bpb_vs_control"] == pytest.approx(0.05)
    assert by_name["klo_x"]["delta_bpb"] == pytest.approx(-0.05)
    assert by_name["dense_finetuned_fp32"]["delta_bpb_vs_control"] == 0.0
    assert by_name["tflite_dynamic_int8"]["delta_bpb_vs_control"] is None  # not fine-tuned
    assert by_name["klo_failed"]["delta_bpb_vs_control"] is None


@pytest.mark.slow
def test_fine_tuned_rows_get_the_control_and_share_a_cached_fine_tune(
    trained_tiny, tiny_corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("KERAS_LLMOPT_CACHE", str(tmp_path / "cache"))
    calls = []

    def tuned(shift):
        def build():
            calls.append(shift)
            model = copy.deepcopy(trained_tiny)
            bias = model.get_layer("block_0_mlp_up").bias
            bias.assign(bias.numpy() + shift)
            return model

        return build

    def fake_control(ctx):
        return variants_lib.Built(
            model=ctx.finetuned_model("fake_dense", tuned(0.2), 1e-3), size_bytes=1
        )

    def fake_tuned(suffix):
        def build(ctx):
            return variants_lib.Built(
                model=ctx.finetuned_model("fake_tune", tuned(0.5), 1e-3),
                size_bytes=1,
                notes=(suffix,),
            )

        return build

    monkeypatch.setitem(variants_lib.VARIANTS, "dense_finetuned_fp32", fake_control)
    monkeypatch.setitem(variants_lib.VARIANTS, "klo_fake_a", fake_tuned("a"))
    monkeypatch.setitem(variants_lib.VARIANTS, "klo_fake_b", fake_tuned("b"))
    kwargs = dict(eval_windows=4, latency_warmup=0, latency_repeats=2, verbose=0, progress=False)
    result = benchmark.run_benchmark(
        trained_tiny, tiny_corpus, tmp_path / "b1", variants="klo_fake_a,klo_fake_b", **kwargs
    )
    names = [r["variant"] for r in result.rows]
    assert names == [
        "keras_fp32",
        "tflite_fp32",
        "klo_fake_a",
        "klo_fake_b",
        "dense_finetuned_fp32",  # added: the matched control of the fine-tuned rows
    ]
    assert calls == [0.5, 0.2]  # one fine-tune shared by both rows, one control
    control = result.row("dense_finetuned_fp32")
    for name in ("klo_fake_a", "klo_fake_b"):
        row = result.row(name)
        assert row["finetuned"] is True and row["error"] is None
        assert row["delta_bpb_vs_control"] == pytest.approx(row["bpb"] - control["bpb"])
        assert row["delta_bpb_vs_control"] != pytest.approx(row["delta_bpb"])
    assert result.row("tflite_fp32")["delta_bpb_vs_control"] is None
    again = benchmark.run_benchmark(
        trained_tiny, tiny_corpus, tmp_path / "b2", variants="klo_fake_a", **kwargs
    )
    assert calls == [0.5, 0.2]  # both fine-tunes came from the cache
    assert again.row("klo_fake_a")["bpb"] == pytest.approx(result.row("klo_fake_a")["bpb"])
    cached = [p.name for p in (tmp_path / "cache" / "finetunes").iterdir()]
    assert any(name.startswith("fake_tune-") for name in cached)


# --- the report: plot and units ---------------------------------------------------------


def _fake_rows():
    rng = np.random.default_rng(0)
    names = list(variants_lib.BUILTIN_VARIANTS)
    sizes = rng.choice([400_000, 800_000, 1_600_000, 3_200_000, 13_000_000], len(names))
    return [
        {"variant": n, "size_bytes": int(s), "bpb": 2.0 + 0.05 * float(b)}
        for n, s, b in zip(names, sizes, rng.random(len(names)))
    ]


@pytest.mark.backend_agnostic
def test_plot_draws_ours_and_anchors_apart_with_non_overlapping_labels(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = _fake_rows()
    ax = report.plot(rows, tmp_path / "p.png")
    groups = {c.get_gid(): c for c in ax.collections}
    assert set(groups) == {"ours", "anchors"}
    ours = [r for r in rows if r["variant"].startswith("klo_")]
    anchors = [r for r in rows if not r["variant"].startswith("klo_")]
    for gid, group in (("ours", ours), ("anchors", anchors)):
        expected = sorted((r["size_bytes"] / 1024, r["bpb"]) for r in group)
        np.testing.assert_allclose(sorted(map(tuple, groups[gid].get_offsets())), expected)
    assert groups["ours"].get_paths()[0] != groups["anchors"].get_paths()[0]  # markers differ
    assert not np.allclose(groups["ours"].get_facecolor()[0], groups["anchors"].get_facecolor()[0])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "keras_llmopt" in legend and any(t.startswith("anchors") for t in legend)
    assert "KiB" in ax.get_xlabel()  # the x values are size_bytes / 1024
    labels = [t for t in ax.texts if t.get_gid() == "label"]
    assert sorted(t.get_text() for t in labels) == sorted(r["variant"] for r in rows)
    renderer = FigureCanvasAgg(ax.figure).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not [
        (labels[i].get_text(), labels[j].get_text())
        for i in range(len(boxes))
        for j in range(i)
        if boxes[i].overlaps(boxes[j])
    ]


@pytest.mark.backend_agnostic
def test_table_sizes_are_in_the_unit_of_their_header(capsys):
    rows = [{"variant": "a", "size_bytes": 3 * 1024 * 1024, "size_gzip_bytes": 512, "bpb": 2.0}]
    report.print_table(rows)
    header, _, line = capsys.readouterr().out.splitlines()
    assert "size_KiB" in header and "gzip_KiB" in header and "size_bytes" not in header
    assert "3,072.0" in line.split() and "0.5" in line.split()
    assert report.format_value(2048, "size_bytes") == "2.0"
