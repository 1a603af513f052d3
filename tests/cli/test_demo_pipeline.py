import json
import os
import subprocess
import sys

import pytest

from keras_llmopt import benchmark


def _cli(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # keeps the session's isolated cache
    return subprocess.run(
        [sys.executable, "-m", "keras_llmopt", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


FAST = ("--eval_windows=8", "--latency_repeats=2", "--latency_warmup=1", "--finetune_steps=4")


@pytest.mark.slow
def test_demo_tiny_writes_the_full_report(trained_tiny, tmp_path):
    out = tmp_path / "report"
    result = _cli("demo", "--preset=tiny", f"--out={out}", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "benchmark.json").read_text())
    assert [r["variant"] for r in data["rows"]] == list(benchmark.DEFAULT_VARIANTS)
    rows = {r["variant"]: r for r in data["rows"]}
    assert rows["keras_fp32"]["trained"] == "cached"  # the fixture's model, from the cache
    for name in ("tflite_fp32", "tflite_dynamic_int8", "onnx_fp32", "klo_pruned50_sparse_tflite"):
        assert rows[name]["error"] is None and rows[name]["verified"] is True, rows[name]
    assert rows["tflite_full_int8_ptq"]["bpb"] is not None
    assert rows["tfmot_qat_int8"]["error"]  # tfmot cannot quantize a token-id input
    assert data["pareto_front"] and data["wall_time_s"] > 0
    assert data["machine"]["cpu_count"] >= 1
    markdown = (out / "report.md").read_text()
    assert "| klo_pruned50_dynamic_int8 |" in markdown and "size_vs_bpb.png" in markdown
    assert (out / "size_vs_bpb.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "artifacts").exists()  # temporary unless --keep_artifacts
    assert "klo_pruned50_sparse_tflite" in result.stdout and "demo (gpt_tiny)" in result.stdout
    sample = result.stdout.split("sample from the best compressed artifact, ")[1]
    best = sample.split(" ")[0]
    assert rows[best]["verified"] is True and best != "tflite_fp32"
    assert rows[best]["size_bytes"] < rows["tflite_fp32"]["size_bytes"]
    # The matched control: every fine-tuned row is compared with the dense fine-tune.
    control = rows["dense_finetuned_fp32"]["bpb"]
    for name in ("klo_pruned50_dynamic_int8", "klo_qat_int8", "klo_cluster16"):
        row = rows[name]
        assert row["finetuned"] is True
        assert row["delta_bpb_vs_control"] == pytest.approx(row["bpb"] - control)
    assert rows["tflite_dynamic_int8"]["delta_bpb_vs_control"] is None
    assert len({r["eval_set"] for r in data["rows"] if r["bpb"] is not None}) == 1
    assert rows["tflite_fp32"]["latency_iqr_pct_1t"] is not None
    assert "size_KiB" in markdown and "delta_bpb_vs_control" in markdown


@pytest.mark.slow
def test_demo_shares_and_caches_the_fine_tunes(trained_tiny, tmp_path):
    variants = "--benchmark_variants=klo_pruned50_dynamic_int8,klo_pruned50_sparse_tflite"
    # Fine-tune steps no other test uses, so the first run finds nothing in the cache.
    flags = [f for f in FAST if not f.startswith("--finetune_steps")] + ["--finetune_steps=3"]
    runs = []
    for i in range(2):
        out = tmp_path / f"report{i}"
        result = _cli("demo", "--preset=tiny", f"--out={out}", variants, *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append((result, json.loads((out / "benchmark.json").read_text())))
    (first, data), (second, again) = runs
    # One pruning fine-tune for both pruned exports, plus the control, the first time...
    assert first.stderr.count("benchmark: pruning fine-tune") == 1
    assert first.stderr.count("benchmark: dense fine-tune (control)") == 1
    # ... and none the second time: both come from the cache, with the same figures.
    assert "fine-tune," not in second.stderr and "fine-tune (control)" not in second.stderr
    assert second.stderr.count("loading the cached") == 2
    names = [r["variant"] for r in again["rows"]]
    assert names[-1] == "dense_finetuned_fp32"  # added as the fine-tuned rows' control
    for old, new in zip(data["rows"], again["rows"]):
        assert new["bpb"] == pytest.approx(old["bpb"], abs=1e-6), new["variant"]


def test_benchmark_command_reduced(trained_tiny, tmp_path):
    out = tmp_path / "bench"
    result = _cli(
        "benchmark", "--preset=tiny", f"--out={out}", "--benchmark_variants=tflite_fp16", *FAST
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "benchmark.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["keras_fp32", "tflite_fp32", "tflite_fp16"]
    assert (out / "artifacts" / "tflite_fp16.tflite").exists()
    assert (out / "report.md").exists() and (out / "size_vs_bpb.png").exists()


def test_optimize_runs_a_recipe(trained_tiny, tmp_path):
    model = tmp_path / "tiny.keras"
    trained_tiny.save(model)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "stages:\n"
        "  - prune: {final_sparsity: 0.5, steps: 4}\n"
        "  - strip\n"
        "  - export: {quantization: dynamic_int8, name: small, verify_windows: 4}\n"
    )
    out = tmp_path / "out"
    result = _cli("optimize", f"--recipe={recipe}", f"--model={model}", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "small.tflite").exists() and (out / "model.keras").exists()
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["artifacts"][0]["verified"] is True
    assert "small.tflite" in result.stdout

    inspected = _cli("inspect", str(out / "model.keras"))
    assert inspected.returncode == 0, inspected.stderr[-3000:]
    assert "parameters" in inspected.stdout and "pruning:" in inspected.stdout
    assert "clustering:" in inspected.stdout and "block_0_mlp_up/kernel" in inspected.stdout


def test_optimize_bad_recipe_fails_before_loading(tmp_path):
    recipe = tmp_path / "bad.json"
    recipe.write_text(json.dumps({"stages": [{"prune": {"final_sparsity": 0.5, "stepz": 3}}]}))
    result = _cli(
        "optimize", f"--recipe={recipe}", f"--model={tmp_path / 'missing.keras'}", "--out=x"
    )
    assert result.returncode == 1
    assert "stage 0 (prune), key `stepz`" in result.stderr
    assert not (tmp_path / "x").exists()


def test_new_commands_have_help():
    from keras_llmopt._src.cli.main import COMMANDS, command_help

    assert {"benchmark", "optimize", "inspect"} <= set(COMMANDS)
    assert "--recipe" in command_help("optimize")
    assert "--benchmark_variants" in command_help("benchmark")
    assert "--finetune_steps" in command_help("demo")
