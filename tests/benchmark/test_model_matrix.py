"""The model matrix: rows cover every KerasHub CausalLM, cells measure or refuse honestly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_llmopt import export
from keras_llmopt._src.benchmark import (
    matrix_cells,
    matrix_checks,
    matrix_models,
    matrix_outcomes,
    model_matrix,
)

keras_hub = pytest.importorskip("keras_hub")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.backend_agnostic
def test_every_keras_hub_causal_lm_is_a_row_or_a_listed_skip():
    families = matrix_models.keras_hub_causal_lms()
    assert "LlamaCausalLM" in families and "GemmaCausalLM" in families
    assert matrix_models.uncovered_causal_lms() == []
    # The lists do not rot: every skip and every row names a class keras-hub has.
    assert set(matrix_models.SKIPPED) <= set(families)
    rows = {row.causal_lm for row in matrix_models.MODELS.values() if row.causal_lm}
    assert rows <= set(families)
    assert not rows & set(matrix_models.SKIPPED)
    assert all(reason.strip() for reason in matrix_models.SKIPPED.values())
    for name in ("PaliGemmaCausalLM", "BLIP2CausalLM", "PARSeqCausalLM"):
        assert "not a text decoder" in matrix_models.SKIPPED[name]
    # Gemma 2 is its own row: GemmaCausalLM with the Gemma 2 flags.
    assert matrix_models.MODELS["gemma2"].causal_lm == "GemmaCausalLM"


@pytest.mark.backend_agnostic
def test_plain_keras_rows_are_the_four_kinds():
    models = {name: matrix_models.MODELS[name].build() for name in ("relu_gpt", "subclassed")}
    relu = [layer for layer in models["relu_gpt"].layers if type(layer).__name__ == "Activation"]
    assert relu and all(layer.get_config()["activation"] == "relu" for layer in relu)
    sub = models["subclassed"]
    assert type(sub) is matrix_models.UnregisteredDecoder
    import keras

    assert keras.saving.get_registered_name(type(sub)) == "UnregisteredDecoder"  # no package
    assert type(matrix_models.sequential_lm()).__name__ == "Sequential"


def test_unknown_family_or_cell_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="Accepted: .*llama"):
        model_matrix.run_matrix(["lama"])
    with pytest.raises(ValueError, match="Accepted: .*dynamic_int8"):
        model_matrix.run_matrix(["sequential"], ["dynamic_int9"])


def test_sequential_cells_are_measured():
    result = model_matrix.run_matrix(
        ["sequential"], ["prune_strip", "qat_int8", "dynamic_int8", "save_load"], warmup_steps=0
    )
    cells = result.rows["sequential"]
    assert {c.status for c in cells.values()} == {"ok"}, {n: c.message for n, c in cells.items()}
    prune = cells["prune_strip"].figures
    assert prune["top1"] >= 0.99 and 0.45 <= prune["sparsity"] <= 0.55
    # Every matmul of the QAT file takes int8 inputs, and it is far smaller than fp32.
    qat = cells["qat_int8"].figures
    assert set(qat["matmuls"]) == {"int8,int8"} and qat["size_ratio"] < 0.5
    assert cells["qat_int8"].text.endswith("int8")
    dynamic = cells["dynamic_int8"].figures
    assert set(dynamic["matmuls"]) == {"float32,int8"} and dynamic["size_ratio"] < 0.5
    assert max(cells["save_load"].figures["max_abs_diff"].values()) <= 1e-6
    assert all(c.seconds > 0 for c in cells.values())
    assert result.totals() == {"ok": 4, "refused": 0, "fail": 0, "silent": 0}


@pytest.mark.parametrize("family", ["reference_gpt", "gpt2"])
def test_dynamic_int8_on_the_reference_gpt_and_a_keras_hub_family(family):
    result = model_matrix.run_matrix([family], ["dynamic_int8"], warmup_steps=0)
    cell = result.cell(family, "dynamic_int8")
    assert cell.status == "ok", cell.message
    assert cell.figures["size_ratio"] < 0.6 and cell.figures["top1"] >= 0.9
    assert cell.figures["matmuls"].get("float32,int8", 0) > 0
    assert f"| {family} | ok " in result.to_markdown()


def test_reference_gpt_calibrated_ptq_is_full_integer():
    cell = model_matrix.run_matrix(["reference_gpt"], ["ptq_int8"], warmup_steps=0).cell(
        "reference_gpt", "ptq_int8"
    )
    assert cell.status == "ok", cell.message
    assert set(cell.figures["matmuls"]) == {"int8,int8"} and cell.figures["size_ratio"] < 0.5


def test_float_matmuls_in_an_int8_cell_are_a_silent_failure(tmp_path):
    ctx = matrix_cells.RowContext(matrix_models.sequential_lm(), str(tmp_path))
    report = ctx.to_tflite(ctx.model, "dyn", quantization="dynamic_int8")
    counts = matrix_outcomes.matmul_inputs(report.summary)
    with pytest.raises(matrix_outcomes.SilentFailure, match="3/3 FULLY_CONNECTED"):
        matrix_checks.require_integer(counts, "int8", "int8")
    assert matrix_outcomes.matmul_label(counts) == "w-int"
    assert matrix_outcomes.matmul_label({"int8,int8": 13, "float32,float32": 2}) == "2/15 float"


def test_outcomes_refusal_failure_and_silent_are_told_apart(tmp_path, monkeypatch):
    def refused(ctx):
        return export.to_tflite(ctx.model, ctx.path("x.tflite"), quantization="int3")

    def broken(ctx):
        raise RuntimeError("converter crashed")

    def third_party_value_error(ctx):
        np.zeros(2).reshape(3)  # numpy's ValueError is not a refusal of ours

    def silent(ctx):
        raise matrix_outcomes.SilentFailure("2/15 matmuls float", "details")

    for name, fn in [
        ("refused", refused),
        ("broken", broken),
        ("numpy", third_party_value_error),
        ("silent", silent),
    ]:
        monkeypatch.setitem(matrix_cells.CELLS, name, fn)
    ctx = matrix_cells.RowContext(matrix_models.sequential_lm(), str(tmp_path))
    got = {
        name: matrix_cells.run_cell(ctx, name) for name in ("refused", "broken", "numpy", "silent")
    }
    assert got["refused"].status == "refused" and got["refused"].text.startswith("refused: ")
    assert "int3" in got["refused"].message
    assert got["broken"].status == "fail" and "RuntimeError" in got["broken"].text
    assert got["numpy"].status == "fail"
    assert (
        got["silent"].status == "silent" and got["silent"].text == "SILENT FAIL: 2/15 matmuls float"
    )
    assert not any(p.endswith(".tflite") for p in os.listdir(tmp_path))  # nothing half-written


def _result():
    cell = matrix_outcomes.Cell
    rows = {
        "a": {"x": cell("ok", "ok 0.27x int8"), "y": cell("refused", "refused: no")},
        "b": {"x": cell("silent", "SILENT FAIL: 2/15 matmuls float"), "y": cell("fail", "FAIL: e")},
    }
    return model_matrix.MatrixResult(["x", "y"], rows, {}, {"PaliGemmaCausalLM": "not a text"})


@pytest.mark.backend_agnostic
def test_table_totals_and_readme_section(tmp_path):
    result = _result()
    assert result.totals() == {"ok": 1, "refused": 1, "fail": 1, "silent": 1}
    table = result.to_markdown()
    assert "| a | ok 0.27x int8 | refused: no |" in table
    assert "4 cells: 1 working, 1 refused, 2 failing (1 of them silently)" in table
    assert "PaliGemmaCausalLM" in table
    readme = tmp_path / "README.md"
    start, end = model_matrix.README_START, model_matrix.README_END
    readme.write_text(f"# T\nbefore\n{start}\nold table\n{end}\nafter\n")
    model_matrix.update_readme(result, readme)
    text = readme.read_text()
    assert text.startswith("# T\nbefore\n") and text.endswith(f"{end}\nafter\n")
    assert "old table" not in text and "| b | SILENT FAIL" in text
    data = json.loads(open(result.write(tmp_path / "m.json")).read())
    assert (
        data["totals"]["silent"] == 1 and data["rows"]["a"]["cells"]["x"]["text"] == "ok 0.27x int8"
    )


@pytest.mark.backend_agnostic
def test_readme_without_markers_is_refused_and_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="model matrix markers"):
        model_matrix.update_readme(_result(), readme)
    assert readme.read_text() == "# no markers\n"


def test_the_repository_readme_has_the_matrix_section():
    text = open(os.path.join(REPO, "README.md")).read()
    start, end = text.find(model_matrix.README_START), text.find(model_matrix.README_END)
    assert 0 <= start < end
    section = text[start:end]
    assert "| model |" in section and "Totals:" in section


@pytest.mark.slow
def test_script_writes_table_json_and_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{model_matrix.README_START}\n{model_matrix.README_END}\n")
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "model_matrix.py"),
            "--families=sequential",
            "--cells=onnx,dynamic_int8",
            "--warmup_steps=0",
            f"--output={tmp_path / 'm.md'}",
            f"--output={tmp_path / 'm.json'}",
            "--update_readme",
            f"--readme={readme}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| sequential | ok " in out.stdout
    assert json.loads((tmp_path / "m.json").read_text())["totals"]["ok"] == 2
    assert "| sequential |" in readme.read_text()


@pytest.mark.slow
def test_full_matrix_on_four_families_has_no_silent_failure_outside_int8(tmp_path):
    families = ["reference_gpt", "sequential", "gpt2", "llama"]
    result = model_matrix.run_matrix(families, work_dir=str(tmp_path))
    assert list(result.rows) == families
    for name, row in result.rows.items():
        assert list(row) == list(matrix_cells.CELLS)
        for cell_name, cell in row.items():
            assert cell.status in matrix_outcomes.STATUSES and cell.seconds > 0
            if cell_name not in matrix_cells.INTEGER_CELLS:
                assert cell.status != "silent", (name, cell_name, cell.message)
    # The reference GPT works in every column.
    reference = result.rows["reference_gpt"]
    assert all(c.status == "ok" for c in reference.values()), {
        n: c.message for n, c in reference.items() if c.status != "ok"
    }
    assert reference["qat_int8"].figures["matmuls"] == {
        "int8,int8": sum(reference["qat_int8"].figures["matmuls"].values())
    }


def test_a_cell_past_its_time_limit_is_stopped_and_counted_failing(monkeypatch):
    import time as time_lib

    from keras_llmopt._src.benchmark import matrix_cells

    def endless(ctx):
        while True:
            time_lib.sleep(0.01)

    monkeypatch.setitem(matrix_cells.CELLS, "endless", endless)
    cell = matrix_cells.run_cell(None, "endless", time_limit=0.3)
    assert cell.status == "fail" and "per-cell limit" in cell.text, cell.text
    assert cell.seconds < 5


def test_generation_cells_pass_on_the_reference_gpt_and_refuse_rwkv7(tmp_path):
    from keras_llmopt._src.benchmark import matrix_generation

    ctx = matrix_cells.RowContext(matrix_models.MODELS["reference_gpt"].build(), str(tmp_path))
    ctx.warm_up(20)
    for name in matrix_generation.CELLS:
        cell = matrix_cells.run_cell(ctx, name)
        assert cell.status == "ok", (name, cell.message)
    assert (
        cell.figures["engine_text"]
        == cell.figures["runner_text"][: len(cell.figures["engine_text"])]
    )
    rwkv = matrix_cells.RowContext(matrix_models.MODELS["rwkv7"].build(), str(tmp_path / "r"))
    cell = matrix_cells.run_cell(rwkv, "generate")
    assert cell.status == "refused" and "recurrent or hybrid" in cell.message, cell.message
