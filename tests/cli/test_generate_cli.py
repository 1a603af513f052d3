"""`keras-llmopt export --generator` and `keras-llmopt generate`, end to end."""

import os
import subprocess
import sys

import numpy as np

from keras_llmopt import export, generation


def _cli(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "keras_llmopt", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_export_a_generator_then_stream_text_from_it_and_from_the_keras_file(
    trained_tiny, tmp_path
):
    saved = tmp_path / "gpt.keras"
    trained_tiny.save(saved)
    out = tmp_path / "gen.tflite"
    result = _cli(
        "export",
        f"--model={saved}",
        f"--out={out}",
        "--generator",
        "--cache_length=32",
        "--prefill_lengths=8,1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "greedy_agreement" in result.stdout and out.exists()
    assert sorted(export.load_generator(out).prefill_lengths) == [1, 8]
    prompt = "import os\n"
    ids = np.frombuffer(prompt.encode(), np.uint8).astype("int32")[None]
    expected = generation.generate(trained_tiny, ids, 12)[0]
    text = bytes(int(t) for t in expected).decode("utf-8", "replace")
    for model in (out, saved):
        result = _cli("generate", f"--model={model}", f"--prompt={prompt}", "--max_new_tokens=12")
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout == text + "\n", (model, result.stdout)
    # A fixed-window file recomputes its window per token: the same greedy text.
    window = tmp_path / "window.tflite"
    export.to_tflite(trained_tiny, window, sequence_length=32)
    result = _cli("generate", f"--model={window}", f"--prompt={prompt}", "--max_new_tokens=12")
    assert result.returncode == 0 and result.stdout == text + "\n", result.stdout


def test_generate_without_a_prompt_or_with_bad_sampling_fails_clearly(trained_tiny, tmp_path):
    saved = tmp_path / "gpt.keras"
    trained_tiny.save(saved)
    result = _cli("generate", f"--model={saved}")
    assert result.returncode != 0 and "--prompt" in result.stderr
    result = _cli("generate", f"--model={saved}", "--prompt=x", "--sampler=top_k")
    assert result.returncode != 0 and "needs top_k=" in result.stderr
