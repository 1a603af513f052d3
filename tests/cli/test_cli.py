import json
import os
import subprocess
import sys

import pytest


def _cli(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "keras_llmopt", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_help_lists_the_commands():
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "demo"):
        assert command in result.stdout


def test_command_help_lists_its_flags():
    result = _cli("train", "--help")
    assert result.returncode == 0
    assert "--preset" in result.stdout and "--steps" in result.stdout


def test_unknown_command_fails_clearly():
    result = _cli("shrink")
    assert result.returncode == 2
    assert "unknown command 'shrink'" in result.stderr


def test_evaluate_missing_model_fails_clearly():
    result = _cli("evaluate", "--model=/nonexistent.keras")
    assert result.returncode == 1
    assert "--model=/nonexistent.keras" in result.stderr


def test_tiny_demo_end_to_end_then_cached(tmp_path):
    report = tmp_path / "demo.json"
    first = _cli(
        "demo",
        "--preset=tiny",
        "--steps=60",
        "--eval_windows=32",
        "--benchmark_variants=tflite_dynamic_int8",
        "--finetune_steps=4",
        "--latency_repeats=2",
        f"--out={report}",
    )
    assert first.returncode == 0, first.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["rows"][0]["trained"] == "now"
    assert data["rows"][0]["bpb"] < 7.0
    assert "keras_fp32" in first.stdout
    # It ends with text generated from its best compressed file (the only one here).
    assert "sample from the best compressed artifact, tflite_dynamic_int8" in first.stdout
    second = _cli(
        "demo",
        "--preset=tiny",
        "--steps=60",
        "--eval_windows=32",
        "--benchmark_variants=tflite_dynamic_int8",
        "--finetune_steps=4",
        "--latency_repeats=2",
        f"--out={report}",
    )
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(report.read_text())
    assert again["rows"][0]["trained"] == "cached"
    assert again["rows"][0]["bpb"] == pytest.approx(data["rows"][0]["bpb"], abs=1e-5)


def test_train_then_evaluate(tmp_path):
    out = tmp_path / "gpt.keras"
    trained = _cli("train", "--preset=tiny", "--steps=20", "--eval_windows=8", f"--out={out}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert out.exists()
    evaluated = _cli("evaluate", f"--model={out}", "--eval_windows=8")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "bpb" in evaluated.stdout


@pytest.fixture
def optimize_flags():
    from absl import flags

    from keras_llmopt._src.cli import optimize_cmd  # noqa: F401  (defines --recipe)

    def parse(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["keras-llmopt optimize", *args])

    yield parse
    flags.FLAGS.unparse_flags()


def test_optimize_a_saved_kerashub_causal_lm(tmp_path, optimize_flags, capsys, tiny_llama_lm):
    from keras_llmopt._src.cli import main, optimize_cmd

    model_path = tmp_path / "llama.keras"
    tiny_llama_lm().save(model_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "stages:\n"
        "  - strip\n"
        "  - evaluate: {windows: 2}\n"
        "  - export: {format: tflite, quantization: dynamic_int8, verify_windows: 2}\n"
    )
    out = tmp_path / "out"
    optimize_flags(f"--model={model_path}", f"--recipe={recipe}", f"--out={out}")
    with pytest.raises(ValueError, match="pass --sequence_length=N"):
        optimize_cmd.run([])
    assert not out.exists()
    optimize_flags(
        f"--model={model_path}", f"--recipe={recipe}", f"--out={out}", "--sequence_length=16"
    )
    result = optimize_cmd.run([])
    (artifact,) = result.artifacts
    assert artifact["verified"] is True and artifact["quantization"] == "dynamic_int8"
    assert (out / "stage2_dynamic_int8.tflite").exists()
    assert json.loads((out / "pipeline.json").read_text())["evaluations"][0]["bpb"] > 0
    assert "stage2_dynamic_int8.tflite" in capsys.readouterr().out
    assert "--sequence_length" in main.command_help("optimize")
