"""Ensembles export through keras_llmopt.export and evaluate like any language model.

Export is TensorFlow's job, so these tests run on the TensorFlow backend only.
"""

import os

import keras
import numpy as np
import pytest

from keras_llmopt import export, reference
from keras_llmopt.ensemble import EnsembleModel


@pytest.fixture(scope="module")
def tiny_members():
    return [reference.build_gpt("tiny", seed=s) for s in (0, 1, 2)]


@pytest.mark.parametrize("strategy", ["weighted", "vote"])
def test_tflite_export_of_an_ensemble_is_verified_and_runs_in_litert(
    tiny_members, tmp_path, strategy
):
    ensemble = EnsembleModel(tiny_members, strategy=strategy, weights=[1, 2, 1])
    path = str(tmp_path / f"{strategy}.tflite")
    report = export.to_tflite(ensemble, path, sequence_length=16)

    assert report.verification is not None and not report.verification.failures
    # All three members' weights are in the file: 4 bytes per distinct float parameter
    # (the converter stores identical constant tensors once).
    distinct = {w.numpy().tobytes(): w.numpy().size for m in tiny_members for w in m.weights}
    assert os.path.getsize(path) > 0.95 * 4 * sum(distinct.values())
    tokens = np.random.default_rng(1).integers(0, 256, size=(1, 16)).astype("int32")
    artifact = export.load_runner(path)(tokens)
    expected = keras.ops.convert_to_numpy(ensemble(tokens))
    np.testing.assert_allclose(artifact, expected, atol=1e-4)
    if strategy == "vote":
        np.testing.assert_array_equal(artifact.argmax(-1), expected.argmax(-1))


def test_onnx_export_of_a_vote_ensemble_is_verified(tiny_members, tmp_path):
    ensemble = EnsembleModel(tiny_members, strategy="vote", vote_output="one_hot")
    report = export.to_onnx(ensemble, str(tmp_path / "vote.onnx"), sequence_length=16)
    assert report.verification is not None and not report.verification.failures


def test_reference_evaluate_reads_ensemble_log_probs_as_logits(trained_tiny, tiny_corpus):
    # A mixture of identical models is that model: same bits per byte, through the
    # log-probability output that evaluate treats as logits.
    member = reference.evaluate(trained_tiny, tiny_corpus, num_windows=32)
    twins = EnsembleModel([trained_tiny, trained_tiny], strategy="prob_mean")
    fused = reference.evaluate(twins, tiny_corpus, num_windows=32)
    assert fused.bpb == pytest.approx(member.bpb, abs=1e-4)
    geometric = EnsembleModel([trained_tiny, trained_tiny], strategy="logit_mean")
    assert reference.evaluate(geometric, tiny_corpus, num_windows=32).bpb == pytest.approx(
        member.bpb, abs=1e-4
    )


def test_saved_model_export_of_a_weighted_ensemble_serves_any_length(tiny_members, tmp_path):
    ensemble = EnsembleModel(tiny_members, strategy="weighted", weights=[1, 2, 1])
    report = export.to_saved_model(ensemble, str(tmp_path / "weighted_sm"))
    assert report.format == "saved_model" and report.verification.passed
    tokens = np.random.default_rng(2).integers(0, 256, size=(2, 24)).astype("int32")
    served = export.load_runner(report.path)(tokens)
    np.testing.assert_allclose(served, keras.ops.convert_to_numpy(ensemble(tokens)), atol=1e-4)
