"""A technique registered from outside the package works in recipes, the CLI and the benchmark.

The toy (tests/plugins/weight_noise.py) is the README's "Adding a technique": nothing in
keras_llmopt names it.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

from keras_llmopt import pipeline, techniques
from keras_llmopt._src.core import registry

PLUGIN = pathlib.Path(__file__).resolve().parents[1] / "plugins" / "weight_noise.py"


@pytest.fixture
def weight_noise():
    (module,) = techniques.load_plugins([str(PLUGIN)])
    yield module
    registry.unregister_technique("weight_noise")


def _tokens(rows=4, length=32):
    return np.random.default_rng(0).integers(0, 256, (rows, length)).astype("int32")


@pytest.mark.backend_agnostic
def test_toy_technique_saves_loads_and_strips(weight_noise, fresh_tiny, tmp_path):
    noisy = weight_noise.add_weight_noise(fresh_tiny, stddev=0.1)
    assert "block_0_mlp_up" in noisy.noise_report.selected_paths
    x = _tokens()
    assert not np.allclose(ops.convert_to_numpy(noisy(x)), ops.convert_to_numpy(fresh_tiny(x)))
    noisy.save(tmp_path / "noisy.keras")
    loaded = keras.saving.load_model(tmp_path / "noisy.keras")
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(noisy(x)), atol=1e-6
    )
    plain = techniques.strip_techniques(loaded)
    assert not techniques.find_states(plain)
    np.testing.assert_allclose(
        ops.convert_to_numpy(plain(x)), ops.convert_to_numpy(noisy(x)), atol=1e-5
    )


def test_toy_technique_runs_as_a_recipe_stage(weight_noise, trained_tiny, tiny_corpus, tmp_path):
    assert "weight_noise" in pipeline.STAGE_SCHEMAS
    recipe = {
        "stages": [
            {"weight_noise": {"stddev": 0.02, "targets": ["*mlp*"]}},
            {"evaluate": {"windows": 8}},
            "strip",
            {"export": {"quantization": "dynamic_int8", "verify_windows": 4}},
        ]
    }
    with pytest.raises(ValueError, match=r"stage 0 \(weight_noise\), key `stddev`"):
        pipeline.parse_recipe({"stages": [{"weight_noise": {"stddev": -1.0}}]})
    result = pipeline.run_recipe(recipe, trained_tiny, tmp_path / "out", corpus=tiny_corpus)
    assert result.artifacts[0]["verified"] is True
    assert os.path.exists(result.artifacts[0]["path"])
    assert not techniques.find_states(result.model)
    up = ops.convert_to_numpy(result.model.get_layer("block_0_mlp_up").kernel)
    original = ops.convert_to_numpy(trained_tiny.get_layer("block_0_mlp_up").kernel)
    query = result.model.get_layer("block_0_attention").weights[0]
    assert not np.allclose(up, original)  # noised (targeted)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(query),
        ops.convert_to_numpy(trained_tiny.get_layer("block_0_attention").weights[0]),
    )  # not targeted


def test_toy_technique_from_the_cli_and_the_benchmark(trained_tiny, tiny_corpus, tmp_path):
    model_path = tmp_path / "tiny.keras"
    trained_tiny.save(model_path)
    recipe = tmp_path / "noise.yaml"
    recipe.write_text("stages:\n  - weight_noise: {stddev: 0.02}\n  - evaluate: {windows: 4}\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    listed = subprocess.run(
        [sys.executable, "-m", "keras_llmopt", "techniques", f"--plugins={PLUGIN}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "weight_noise" in listed.stdout and "toy_weight_noise_fp32" in listed.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_llmopt",
            "optimize",
            f"--plugins={PLUGIN}",
            f"--recipe={recipe}",
            f"--model={model_path}",
            f"--out={tmp_path / 'cli_out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "cli_out" / "pipeline.json").read_text())
    assert [s["stage"] for s in summary["timings"]][0] == "stage 0 (weight_noise)"

    from keras_llmopt import benchmark

    techniques.load_plugins([str(PLUGIN)])
    try:
        result = benchmark.run_benchmark(
            trained_tiny,
            tiny_corpus,
            tmp_path / "bench",
            variants=["toy_weight_noise_fp32"],
            eval_windows=4,
            latency_warmup=0,
            latency_repeats=1,
            verify_windows=4,
            progress=False,
        )
    finally:
        registry.unregister_technique("weight_noise")
    row = result.row("toy_weight_noise_fp32")
    assert row.get("error") is None, row.get("error")
    assert row["verified"] is True and row["size_ratio"] == pytest.approx(1.0, abs=0.05)
