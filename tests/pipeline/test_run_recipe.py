import json

import keras
import numpy as np
import pytest

from keras_llmopt import pipeline, sparsity

PRUNE_RECIPE = {
    "name": "tiny_prune",
    "stages": [
        {"prune": {"final_sparsity": 0.5, "steps": 12, "learning_rate": 1e-4}},
        "strip",
        {"evaluate": {"windows": 8}},
        {"export": {"format": "tflite", "sparse": True, "name": "sparse", "verify_windows": 4}},
        {"export": {"quantization": "dynamic_int8", "verify_windows": 4}},
    ],
}


@pytest.fixture(scope="module")
def pruned_run(trained_tiny, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe_out")
    before = [np.array(w) for w in trained_tiny.get_weights()]
    result = pipeline.run_recipe(PRUNE_RECIPE, trained_tiny, out, corpus=tiny_corpus, verbose=0)
    return out, result, before


def test_recipe_end_to_end_writes_verified_artifacts(pruned_run, trained_tiny):
    out, result, before = pruned_run
    assert [a["verified"] for a in result.artifacts] == [True, True]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.keras", "pipeline.json", "sparse.tflite", "stage4_dynamic_int8.tflite"]
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["recipe"]["name"] == "tiny_prune"
    assert [a["path"] for a in summary["artifacts"]] == [a["path"] for a in result.artifacts]
    assert summary["evaluations"][0]["bpb"] < 8.0
    assert len(summary["timings"]) == len(PRUNE_RECIPE["stages"])
    # The user's model is untouched.
    for old, new in zip(before, trained_tiny.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_recipe_model_is_pruned_and_stripped(pruned_run):
    out, result, _ = pruned_run
    report = sparsity.sparsity_report(result.model)
    mlp = [w for w in report.weights if "mlp_up" in w.path]
    assert mlp and all(w.sparsity == pytest.approx(0.5, abs=0.01) for w in mlp)
    saved = keras.saving.load_model(out / "model.keras", compile=False)
    assert not any("mask" in v.path for v in saved.variables)
    sparse, dense = (out / "sparse.tflite").stat().st_size, result.artifacts[1]["size_bytes"]
    assert sparse > dense  # fp32 sparse-encoded vs int8 dense: both exist, both verified


def test_unregistered_technique_fails_before_training(trained_tiny, tiny_corpus, tmp_path):
    from keras_llmopt._src.core import registry

    recipe = pipeline.parse_recipe(
        {"stages": [{"prune": {"steps": 5}}, {"cluster": {"steps": 2}}, "strip"]}
    )
    clustering = registry.get_technique("clustering")
    registry.unregister_technique("clustering")  # as if its plugin were not loaded
    try:
        with pytest.raises(pipeline.StageError, match=r"stage 1 \(cluster\).*no registered"):
            pipeline.run_recipe(recipe, trained_tiny, tmp_path / "o", corpus=tiny_corpus)
    finally:
        registry.register_technique(clustering, replace=True)
    assert not (tmp_path / "o").exists()


def test_unknown_scheme_fails_before_training(trained_tiny, tiny_corpus, tmp_path):
    recipe = {"stages": [{"quantize": {"scheme": "3bit", "steps": 2}}]}
    with pytest.raises(ValueError, match=r"stage 0 \(quantize\), key `scheme`.*'3bit'"):
        pipeline.run_recipe(recipe, trained_tiny, tmp_path / "o", corpus=tiny_corpus)


def test_bad_arguments(trained_tiny, tmp_path):
    with pytest.raises(TypeError, match="keras.Model"):
        pipeline.run_recipe({"stages": ["strip"]}, "model.keras", tmp_path)
    with pytest.raises(ValueError, match=r"stage 0 \(prune\), key `final_sparsity`"):
        pipeline.run_recipe({"stages": [{"prune": {"final_sparsity": 2}}]}, trained_tiny, tmp_path)


@pytest.mark.slow
def test_qat_recipe_exports_full_integer(trained_tiny, tiny_corpus, tmp_path):
    recipe = {
        "stages": [
            {"quantize": {"steps": 6, "learning_rate": 1e-4}},
            {"export": {"quantization": "int8", "name": "qat", "verify_windows": 4}},
        ]
    }
    result = pipeline.run_recipe(
        recipe, trained_tiny, tmp_path, corpus=tiny_corpus, verbose=0, save_model=False
    )
    (artifact,) = result.artifacts
    assert artifact["verified"] is True and artifact["quantization"] == "int8"
    assert (tmp_path / "qat.tflite").exists()


@pytest.mark.backend_agnostic
def test_training_stages_run_on_any_backend(trained_tiny, tiny_corpus, tmp_path):
    recipe = {
        "stages": [
            {"prune": {"final_sparsity": 0.5, "steps": 2, "frequency": 1}},
            "strip",
            {"evaluate": {"windows": 2}},
        ]
    }
    result = pipeline.run_recipe(recipe, trained_tiny, tmp_path, corpus=tiny_corpus, verbose=0)
    assert np.isfinite(result.evaluations[0]["bpb"])
    report = sparsity.sparsity_report(result.model)
    assert report.pruned_sparsity != report.pruned_sparsity  # stripped: no masks left (nan)
    mlp = [w for w in report.weights if "mlp_down" in w.path]
    assert all(w.sparsity == pytest.approx(0.5, abs=0.01) for w in mlp)
    assert (tmp_path / "model.keras").exists() and (tmp_path / "pipeline.json").exists()
