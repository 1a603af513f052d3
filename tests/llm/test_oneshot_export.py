"""GPTQ files: the ``.tflite`` stores the grid GPTQ chose (TensorFlow: the exporter's backend)."""

import numpy as np
import pytest

from keras_llmopt import llm


@pytest.fixture(scope="module")
def calibration(tiny_corpus):
    return tiny_corpus.train[:64, :-1].astype("int32")


@pytest.mark.parametrize("bits, group_size, mode", [(4, 32, "int4"), (8, -1, "dynamic_int8")])
def test_gptq_export_stores_the_chosen_grid(
    trained_tiny, calibration, tmp_path, bits, group_size, mode
):
    from keras_llmopt import export
    from keras_llmopt._src.export import weight_grids

    out = llm.gptq(trained_tiny, calibration, bits=bits, group_size=group_size, num_samples=16)
    result = export.to_tflite(out, tmp_path / "gptq.tflite", quantization=mode)
    assert result.verification.passed
    content = (tmp_path / "gptq.tflite").read_bytes()
    states = llm.grid_states(out)
    grids = [
        weight_grids.WeightGrid(path, s.codes(), np.asarray(s.scales), bits, s.group_size)
        for path, s in states
    ]
    weight_grids.check_grids_kept(content, grids)  # raises on any differing weight
    stored = weight_grids.stored_weights(content)
    assert len(stored) >= len(grids)


def test_smoothquant_improves_full_integer_ptq_on_a_model_with_outliers(
    outlier_tiny, tiny_corpus, calibration, tmp_path
):
    from keras_llmopt import export, quantization, reference

    dense = reference.evaluate(outlier_tiny, tiny_corpus, num_windows=64).bpb
    loss = {}
    for name, model in (
        ("ptq", outlier_tiny),
        ("smoothquant+ptq", llm.smoothquant(outlier_tiny, calibration, num_samples=64)),
    ):
        quantized = quantization.quantize_model(model)
        quantization.calibrate(quantized, calibration)  # no training: ranges only
        path = tmp_path / f"{name}.tflite"
        result = export.to_tflite(quantized, path, quantization="int8", verify=False)
        kinds = {k for op in result.summary["matmul_inputs"].values() for k in op}
        assert kinds == {"int8,int8"}, kinds
        loss[name] = reference.evaluate(str(path), tiny_corpus, num_windows=64).bpb - dense
    assert loss["smoothquant+ptq"] < 0.3 * loss["ptq"], loss
    assert loss["smoothquant+ptq"] < 0.005, loss


def test_groups_as_wide_as_a_layer_share_the_files_block_size(trained_tiny, calibration, tmp_path):
    from keras_llmopt import export

    out = llm.gptq(trained_tiny, calibration, bits=4, group_size=64, num_samples=8)
    assert {s.group_size for _, s in llm.grid_states(out)} == {-1, 64}  # 64 and 256 inputs
    result = export.to_tflite(out, tmp_path / "g64.tflite", quantization="int4")
    assert result.verification.passed
    assert any("grid(s) kept exactly" in note for note in result.notes)


def test_grids_no_one_block_size_stores_are_refused_before_converting(
    fresh_tiny, calibration, tmp_path
):
    from keras_llmopt import export

    out = llm.gptq(fresh_tiny, calibration, bits=4, group_size=128, num_samples=8)
    with pytest.raises(ValueError, match=r"one block size.*128-column groups.*group_size"):
        export.to_tflite(out, tmp_path / "g128.tflite", quantization="int4")
    assert not (tmp_path / "g128.tflite").exists()


@pytest.mark.parametrize("bits, group_size, mode", [(4, 32, "int4"), (8, -1, "dynamic_int8")])
def test_the_generator_stores_the_grid_in_every_signature(
    trained_tiny, calibration, tmp_path, bits, group_size, mode
):
    from keras_llmopt import export
    from keras_llmopt._src.export import weight_grids

    out = llm.gptq(trained_tiny, calibration, bits=bits, group_size=group_size, num_samples=16)
    path = tmp_path / "generator.tflite"
    result = export.to_tflite_generator(out, path, cache_length=32, quantization=mode)
    assert result.verification.passed
    grids = [
        weight_grids.WeightGrid(p, s.codes(), np.asarray(s.scales), bits, s.group_size)
        for p, s in llm.grid_states(out)
    ]
    weight_grids.check_grids_kept(path.read_bytes(), grids)
    from keras_llmopt._src.export.stored_weights import read_weights

    weights, _ = read_weights(bytearray(path.read_bytes()))
    holding = {g for w in weights for g, _ in w.tensors}
    assert holding == {0, 1, 2}, "a signature (decode, prefill 16, 4) holds no integer weight"


def test_grouped_8_bit_grids_are_refused_by_dynamic_int8_before_converting(
    fresh_tiny, calibration, tmp_path
):
    from keras_llmopt import export

    out = llm.gptq(fresh_tiny, calibration, bits=8, group_size=32, num_samples=8)
    with pytest.raises(ValueError, match=r"one scale per output row.*group_size=-1"):
        export.to_tflite(out, tmp_path / "g.tflite", quantization="dynamic_int8")
