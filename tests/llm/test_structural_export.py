"""Structurally pruned models export to ``.tflite`` in every mode, verified, and the file shrinks.

Structural pruning changes layer shapes (fewer heads, fewer MLP units), so unlike
sparse pruning the saving shows in a plain dense file: the float32 file shrinks with
the parameter count.
"""

import numpy as np
import pytest

from keras_llmopt import export, llm
from keras_llmopt._src.benchmark import matrix_models

# int8 post-training quantization of the (briefly trained) tiny GPT loses some top-1
# agreement whatever the model's size (tests/export/test_tflite.py accepts it the same
# way); bits per byte stays under the mode's default bound.
TOLERANCES = {"int8": {"top1": 0.8}}


@pytest.fixture(scope="module")
def pruned(trained_tiny, tiny_corpus):
    """The trained tiny GPT with half its heads and half its MLP channels removed."""
    calibration = tiny_corpus.train[:64, :-1].astype("int32")
    small = llm.prune_heads(trained_tiny, calibration, fraction=0.5, num_samples=16)
    small = llm.prune_ffn(small, calibration, fraction=0.5, num_samples=16)
    assert small.get_layer("block_0_attention").num_heads == 1
    assert small.get_layer("block_0_mlp_up").units == 128
    return small


@pytest.fixture(scope="module")
def verification(tiny_corpus):
    """Real text windows, so that the artifact's bits per byte is compared too."""
    windows = tiny_corpus.validation[:8].astype("int32")
    return windows[:, :-1], windows[:, 1:]


@pytest.mark.parametrize("mode", [None, "float16", "dynamic_int8", "int8", "int4"])
def test_the_pruned_gpt_exports_verified_in_every_mode(
    pruned, tiny_corpus, verification, mode, tmp_path
):
    path = tmp_path / f"{mode}.tflite"
    report = export.to_tflite(
        pruned,
        path,
        quantization=mode,
        representative_dataset=tiny_corpus.train[:16] if mode == "int8" else None,
        verification_data=verification,
        tolerance=TOLERANCES.get(mode),
    )
    assert report.verification.passed, report.verification
    assert report.verification.bpb_artifact is not None  # bits per byte was compared
    assert path.exists() and report.size_bytes == path.stat().st_size
    # Each block's 1-head attention and 128-unit MLP are in the file: 2 blocks x (q, k,
    # v, output, up, down) plus the head.
    assert sum(report.summary["matmul_inputs"]["FULLY_CONNECTED"].values()) == 13
    if mode is None:
        assert report.verification.max_abs_error < 1e-4
        tokens = verification[0][:2]
        got = export.load_runner(report.path)(tokens)
        np.testing.assert_allclose(got, np.asarray(pruned(tokens)), atol=1e-4)
    else:
        assert report.size_bytes < 0.6 * 4 * pruned.count_params()


def test_the_float32_file_shrinks_with_the_parameter_count(trained_tiny, pruned, tmp_path):
    full = export.to_tflite(trained_tiny, tmp_path / "full.tflite")
    small = export.to_tflite(pruned, tmp_path / "small.tflite")
    assert full.verification.passed and small.verification.passed
    for model, report in ((trained_tiny, full), (pruned, small)):
        assert report.size_bytes >= 4 * model.count_params()  # every weight is in the file
    param_ratio = pruned.count_params() / trained_tiny.count_params()
    file_ratio = small.size_bytes / full.size_bytes
    assert param_ratio < 0.7  # 36 % of the parameters removed
    # A float32 file is 4 bytes per weight plus a fixed part (graph, names, metadata:
    # ~19 KB for both models), which pulls the file ratio towards 1 by about
    # overhead / (4 * small params) - overhead / (4 * full params) = 2 %. 5 % bounds it.
    assert file_ratio == pytest.approx(param_ratio, rel=0.05), (file_ratio, param_ratio)
    overheads = [
        r.size_bytes - 4 * m.count_params() for m, r in ((trained_tiny, full), (pruned, small))
    ]
    assert abs(overheads[0] - overheads[1]) < 0.01 * full.size_bytes, overheads


def test_the_pruned_gpt_exports_a_verified_generator(pruned, tmp_path):
    report = export.to_tflite_generator(pruned, tmp_path / "generator.tflite", cache_length=32)
    assert report.verification.passed


def _hub_batch():
    ids = np.random.default_rng(0).integers(1, 256, (8, 16)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_a_pruned_keras_hub_model_exports_verified(family, tmp_path):
    model = matrix_models.MODELS[family].build()
    if family == "gemma":
        small = llm.prune_heads(model, _hub_batch(), fraction=0.5, num_samples=8)
        config = small.backbone.get_config()
        assert (config["num_query_heads"], config["num_key_value_heads"]) == (2, 1)
    else:
        small = llm.prune_ffn(model, _hub_batch(), fraction=0.5, num_samples=8)
        small = llm.prune_layers(small, _hub_batch(), num_layers=1, num_samples=8)
        assert small.backbone.get_config()["num_layers"] == 1
    report = export.to_tflite(small, tmp_path / f"{family}.tflite", sequence_length=16)
    assert report.verification.passed and report.verification.max_abs_error < 1e-4
    assert report.size_bytes >= 4 * small.count_params()
    batch = {k: v[:1] for k, v in _hub_batch().items()}
    got = export.load_runner(report.path)(batch)
    np.testing.assert_allclose(got, np.asarray(small(batch)), atol=1e-4)


def test_prune_distill_qat_exports_a_full_integer_int8_file(
    trained_tiny, pruned, tiny_corpus, verification, tmp_path
):
    """The issue's chain: structural pruning -> distillation -> QAT int8 -> export."""
    from keras_llmopt import quantization
    from keras_llmopt._src.core import model_copy
    from keras_llmopt._src.reference import training

    student = model_copy.copy_model(pruned, "the test", compiled=False)
    llm.recover(student, trained_tiny, tiny_corpus.train[:32], steps=4, batch_size=8, verbose=0)
    qat = quantization.quantize_model(student)
    qat.compile(optimizer="adam", loss=training.lm_loss())
    x, y = training.make_batches(tiny_corpus.train, 8, 4)
    qat.fit(x, y, batch_size=8, epochs=1, verbose=0)
    report = export.to_tflite(
        qat,
        tmp_path / "int8.tflite",
        quantization="int8",
        verification_data=verification,
        tolerance=TOLERANCES["int8"],
    )
    assert report.verification.passed, report.verification
    matmuls = report.summary["matmul_inputs"]["FULLY_CONNECTED"]
    assert set(matmuls) == {"int8,int8"}, matmuls  # every matmul: int8 input and weights
    assert sum(matmuls.values()) == 13  # the pruned shapes: 1 head, 128 channels per block
