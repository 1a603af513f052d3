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


# --- any model the Python API accepts: a saved KerasHub CausalLM ---------------------


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory, tiny_llama_lm):
    path = tmp_path_factory.mktemp("llama") / "llama.keras"
    tiny_llama_lm().save(path)
    return path


@pytest.fixture(scope="module")
def corpus16():
    from keras_llmopt import reference

    return reference.load_corpus(16)


KERASHUB_RECIPE = {
    "stages": [
        "strip",
        {"evaluate": {"windows": 2}},
        {"export": {"format": "tflite", "name": "llama", "verify_windows": 2}},
    ]
}
PRUNE_STAGE = {"prune": {"final_sparsity": 0.5, "steps": 2, "batch_size": 2, "frequency": 1}}


def test_recipe_on_a_saved_kerashub_llama(llama_file, corpus16, tmp_path):
    from keras_llmopt import export

    model = keras.saving.load_model(llama_file, compile=False)
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"sequence length.*pass sequence_length=N"):
        pipeline.run_recipe(KERASHUB_RECIPE, model, tmp_path / "none", corpus=corpus16)
    assert not (tmp_path / "none").exists()  # refused before anything ran
    out = tmp_path / "out"
    result = pipeline.run_recipe(
        KERASHUB_RECIPE, model, out, corpus=corpus16, verbose=0, sequence_length=16
    )
    (artifact,) = result.artifacts
    assert artifact["verified"] is True and artifact["verification"]["bpb_artifact"] is not None
    assert np.isfinite(result.evaluations[0]["bpb"])
    runner = export.load_runner(out / "llama.tflite")
    tokens = corpus16.validation[:1, :16].astype("int32")
    feeds = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    expected = keras.ops.convert_to_numpy(result.model(feeds))
    np.testing.assert_allclose(runner(feeds), expected, atol=1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["llama.tflite", "model.keras", "pipeline.json"]
    reloaded = keras.saving.load_model(out / "model.keras", compile=False)
    assert type(reloaded).__name__ == "LlamaCausalLM"
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # the user's model is untouched


@pytest.mark.slow
def test_prune_recipe_fine_tunes_a_kerashub_llama_on_dict_inputs(llama_file, corpus16, tmp_path):
    model = keras.saving.load_model(llama_file, compile=False)
    model.compile(sampler="greedy")
    recipe = {"stages": [PRUNE_STAGE, *KERASHUB_RECIPE["stages"]]}
    result = pipeline.run_recipe(
        recipe, model, tmp_path, corpus=corpus16, verbose=0, sequence_length=16
    )
    assert result.artifacts[0]["verified"] is True
    report = sparsity.sparsity_report(result.model)
    mlp = [w for w in report.weights if "feedforward" in w.path]
    assert mlp and all(w.sparsity == pytest.approx(0.5, abs=0.02) for w in mlp)
    assert type(result.model.sampler).__name__ == "GreedySampler"  # kept through fine-tuning


def test_recipe_sequence_length_key_and_its_checks(llama_file, corpus16, tmp_path):
    model = keras.saving.load_model(llama_file, compile=False)
    recipe = pipeline.parse_recipe(
        {"sequence_length": 16, "stages": [{"evaluate": {"windows": 2}}]}
    )
    assert recipe.sequence_length == 16
    assert pipeline.parse_recipe(recipe.to_dict()) == recipe
    result = pipeline.run_recipe(recipe, model, tmp_path / "a", corpus=corpus16, verbose=0)
    assert np.isfinite(result.evaluations[0]["bpb"])
    with pytest.raises(ValueError, match="`sequence_length` must be a positive integer"):
        pipeline.parse_recipe({"sequence_length": 0, "stages": ["strip"]})
    gpt = pipeline.parse_recipe({"sequence_length": 999, "stages": ["strip"]})
    from keras_llmopt import reference

    with pytest.raises(ValueError, match=r"sequence_length=999; accepted: at most 64"):
        pipeline.run_recipe(gpt, reference.build_gpt("tiny"), tmp_path / "b")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    tiny_vocab = keras.Model(tokens, keras.layers.Embedding(100, 8)(tokens))
    with pytest.raises(ValueError, match="takes 100 token ids.*at least 256"):
        pipeline.run_recipe(recipe, tiny_vocab, tmp_path / "c")
    features = keras.Input((16, 4))
    floats = keras.Model(features, keras.layers.Dense(2)(features))
    with pytest.raises(ValueError, match="inputs the pipeline cannot feed"):
        pipeline.run_recipe(recipe, floats, tmp_path / "c")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_qat_recipe_on_a_kerashub_gpt2_exports_full_integer(corpus16, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=256,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    recipe = {
        "stages": [
            {"quantize": {"steps": 2, "batch_size": 4}},
            {"export": {"quantization": "int8", "verify_windows": 2, "calibration_windows": 4}},
        ]
    }
    result = pipeline.run_recipe(recipe, lm, tmp_path, corpus=corpus16, verbose=0)
    (artifact,) = result.artifacts
    assert artifact["verified"] is True and artifact["quantization"] == "int8"
    assert type(result.model.sampler).__name__ == "GreedySampler"  # kept through training


def test_oneshot_gptq_stage_exports_the_grid_it_chose(trained_tiny, tiny_corpus, tmp_path):
    from keras_llmopt import llm
    from keras_llmopt._src.export import weight_grids

    recipe = {
        "stages": [
            {"oneshot": {"method": "gptq", "bits": 4, "group_size": 32, "num_samples": 16}},
            "strip",
            {"export": {"quantization": "int4", "name": "gptq", "verify_windows": 4}},
        ]
    }
    result = pipeline.run_recipe(recipe, trained_tiny, tmp_path / "o", corpus=tiny_corpus)
    (artifact,) = result.artifacts
    assert artifact["verified"]
    states = llm.grid_states(result.model)
    assert states, "the stage left no GPTQ grid"
    grids = [
        weight_grids.WeightGrid(p, s.codes(), np.asarray(s.scales), 4, s.group_size)
        for p, s in states
    ]
    weight_grids.check_grids_kept((tmp_path / "o" / "gptq.tflite").read_bytes(), grids)
    assert not llm.grid_states(trained_tiny), "the user's model was changed"


def test_oneshot_stage_with_a_bad_setting_fails_before_any_work(trained_tiny, tmp_path):
    recipe = {"stages": [{"oneshot": {"method": "awq", "bits": 8}}]}
    with pytest.raises(ValueError, match=r"stage 0 \(oneshot\).*bits"):
        pipeline.run_recipe(recipe, trained_tiny, tmp_path / "o")
    assert not (tmp_path / "o").exists()
