import numpy as np
import pytest

from keras_llmopt import pipeline, sparsity


def test_inspect_plain_model(trained_tiny):
    inspection = pipeline.inspect_model(trained_tiny)
    assert inspection.parameters == trained_tiny.count_params()
    assert inspection.bytes_by_dtype == {"float32": 4 * trained_tiny.count_params()}
    assert not inspection.pruned
    assert inspection.sparsity.global_sparsity < 0.01
    pruning = inspection.targets["pruning"]
    assert "block_0_mlp_up" in pruning.selected_paths
    assert "block_1_attention/query" in pruning.selected_paths
    assert "lm_head" not in pruning.selected_paths
    assert "output head" in pruning.reason("lm_head").reason
    assert set(inspection.targets) == {"pruning", "quantization", "clustering"}
    text = str(inspection)
    assert "bytes by dtype" in text and "quantization:" in text and "block_0_mlp_down" in text


def test_inspect_saved_pruned_model(trained_tiny, tiny_corpus, tmp_path):
    from keras_llmopt import reference

    pruned = sparsity.prune_low_magnitude(
        trained_tiny, sparsity.ConstantSparsity(0.5, 0, frequency=1)
    )
    reference.train(
        pruned,
        tiny_corpus,
        2,
        learning_rate=1e-5,
        callbacks=[sparsity.UpdatePruningStep()],
        verbose=0,
    )
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    inspection = pipeline.inspect_model(path)
    assert inspection.pruned
    # Masks are not counted as parameters.
    assert inspection.parameters == trained_tiny.count_params()
    rows = {w.path: w for w in inspection.sparsity.weights}
    mlp = [w for p, w in rows.items() if "mlp_up" in p]
    assert mlp and all(w.pruned and w.sparsity == pytest.approx(0.5, abs=0.01) for w in mlp)
    data = inspection.to_dict()
    assert data["parameters"] == inspection.parameters
    assert np.isclose(data["sparsity"]["pruned_sparsity"], 0.5, atol=0.01)


def test_inspect_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        pipeline.inspect_model(tmp_path / "nope.keras")
    (tmp_path / "m.h5").write_text("x")
    with pytest.raises(ValueError, match="expected a .keras file"):
        pipeline.inspect_model(tmp_path / "m.h5")
    with pytest.raises(TypeError, match="Received: int"):
        pipeline.inspect_model(3)


def _tiny_gpt():
    from keras_llmopt import reference

    return reference.build_gpt("tiny")


@pytest.mark.parametrize("name", ["reference_gpt", "llama"])
def test_inspect_quantization_verdict_is_what_quantize_model_does(name, tiny_llama_lm):
    from keras_llmopt import quantization

    model = _tiny_gpt() if name == "reference_gpt" else tiny_llama_lm()
    verdict = pipeline.inspect_model(model).targets["quantization"]
    report = quantization.quantize_model(model).quantize_report
    assert sorted(verdict.selected_paths) == sorted(report.quantized)
    assert {d.path: d.reason for d in verdict.skipped} == report.skipped
    # The token embedding is quantized (its lookup output feeds int8 matmuls), and
    # inspect says so rather than "ignored by default".
    embedding = next(p for p in report.quantized if p.endswith("token_embedding"))
    assert verdict.reason(embedding).selected


def test_inspect_quantization_verdict_of_a_pruned_model(fresh_tiny):
    from keras_llmopt import quantization

    pruned = sparsity.prune_low_magnitude(fresh_tiny, sparsity.ConstantSparsity(0.5, 0))
    verdict = pipeline.inspect_model(pruned).targets["quantization"]
    report = quantization.quantize_model(pruned).quantize_report
    assert sorted(verdict.selected_paths) == sorted(report.quantized)
    assert {d.path: d.reason for d in verdict.skipped} == report.skipped
