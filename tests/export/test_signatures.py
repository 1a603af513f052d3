"""Several named signatures in one .tflite, each verified against its Keras reference."""

import os

import keras
import numpy as np
import pytest

from keras_llmopt import export, reference

VOCAB = 64


def _model():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    hidden = keras.layers.Embedding(VOCAB, 16, name="embed")(tokens)
    hidden = keras.layers.Dense(16, activation="relu", name="mix")(hidden)
    logits = keras.layers.Dense(VOCAB, name="head")(hidden)
    return keras.Model(tokens, logits)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _signatures(model, break_step=False):
    """``full``: logits for tokens [1, 8]; ``step``: tokens [1, 1] plus a float bias ->
    ``logits`` (shifted by the bias) and ``score`` (their sum)."""

    def full(tokens):
        return {"logits": model(tokens, training=False)}

    def full_reference(tokens):
        return {"logits": _numpy(model(tokens, training=False))}

    def step(tokens, bias):
        logits = model(tokens, training=False) + bias
        return {"logits": logits, "score": keras.ops.sum(logits, axis=-1)}

    def step_reference(tokens, bias):
        logits = _numpy(model(tokens, training=False)) + bias
        if break_step:
            logits = logits + 1.0  # a reference the artifact cannot match
        return {"score": logits.sum(-1), "logits": logits}

    rng = np.random.default_rng(1)
    step_samples = [
        {
            "tokens": rng.integers(0, VOCAB, (1, 1)).astype("int32"),
            "bias": rng.standard_normal((1,)).astype("float32"),
        }
        for _ in range(3)
    ]
    return [
        export.Signature(
            "full",
            full,
            [("tokens", (1, 8), "int32")],
            ["logits"],
            full_reference,
            verification_inputs=[
                {"tokens": rng.integers(0, VOCAB, (1, 8)).astype("int32")} for _ in range(3)
            ],
        ),
        export.Signature(
            "step",
            step,
            [("tokens", (1, 1), "int32"), ("bias", (1,), "float32")],
            ["logits", "score"],
            step_reference,
            verification_inputs=step_samples,
        ),
    ]


def _signature_list(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_list()


def test_two_signatures_in_one_file_are_verified_and_run_by_name(tmp_path):
    model = _model()
    path = tmp_path / "multi.tflite"
    result = export.to_tflite_signatures(_signatures(model), path)
    assert result.verification.passed
    assert set(result.verification.reports) == {"full", "step"}
    assert set(result.verification["step"]) == {"logits", "score"}
    assert result.verification["full"]["logits"].max_abs_error < 1e-4
    listed = _signature_list(path)
    assert {k: sorted(v["inputs"]) for k, v in listed.items()} == {
        "full": ["tokens"],
        "step": ["bias", "tokens"],
    }
    assert {k: sorted(v["outputs"]) for k, v in listed.items()} == {
        "full": ["logits"],
        "step": ["logits", "score"],
    }
    assert result.summary["signatures"] == {
        k: {"inputs": v["inputs"], "outputs": v["outputs"]} for k, v in listed.items()
    }
    # The weights are stored once although both signatures read them.
    assert result.num_parameters == model.count_params()
    assert result.size_bytes < 1.5 * 4 * model.count_params()

    runner = export.load_runner(path)
    assert set(runner.signature_names) == {"full", "step"}
    tokens = np.random.default_rng(5).integers(0, VOCAB, (1, 8)).astype("int32")
    full = runner.run_signature("full", {"tokens": tokens})
    np.testing.assert_allclose(full["logits"], _numpy(model(tokens)), atol=1e-4)
    bias = np.array([0.5], "float32")
    step = runner.run_signature("step", {"tokens": tokens[:, :1], "bias": bias})
    expected = _numpy(model(tokens[:, :1])) + 0.5
    assert set(step) == {"logits", "score"}
    np.testing.assert_allclose(step["logits"], expected, atol=1e-4)
    np.testing.assert_allclose(step["score"], expected.sum(-1), atol=1e-3)
    with pytest.raises(ValueError, match=r"no signature 'prefill'. Accepted: \["):
        runner.run_signature("prefill", {"tokens": tokens})
    with pytest.raises(ValueError, match=r"Received: \['tokens'\] .*missing \['bias'\]"):
        runner.run_signature("step", {"tokens": tokens[:, :1]})
    with pytest.raises(ValueError, match=r"Received: shape \(1, 8\)"):
        runner.run_signature("step", {"tokens": tokens, "bias": bias})


def test_a_disagreeing_signature_fails_by_name_and_leaves_no_file(tmp_path):
    model = _model()
    path = tmp_path / "multi.tflite"
    with pytest.raises(export.VerificationError, match="signature 'step', output 'logits'") as info:
        export.to_tflite_signatures(_signatures(model, break_step=True), path)
    assert "signature 'full'" not in str(info.value)
    assert not info.value.report.passed
    assert info.value.report["full"]["logits"].passed
    assert not info.value.report["step"]["logits"].passed
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"previous artifact")
    with pytest.raises(export.VerificationError):
        export.to_tflite_signatures(_signatures(model, break_step=True), path)
    assert path.read_bytes() == b"previous artifact"
    assert os.listdir(tmp_path) == ["multi.tflite"]
    # Unverified, the same signatures are written (the mismatch was the reference's).
    export.to_tflite_signatures(_signatures(model, break_step=True), path, verify=False)
    assert set(_signature_list(path)) == {"full", "step"}


def test_signature_arguments_are_checked(tmp_path):
    model = _model()
    good = _signatures(model)[0]
    with pytest.raises(ValueError, match="Invalid name. Received: 'bad key'"):
        export.Signature("bad key", good.function, good.inputs, good.outputs, good.reference)
    with pytest.raises(ValueError, match=r"needs a fully fixed shape. Received: shape=\(1, None"):
        export.Signature("s", good.function, [("tokens", (1, None), "int32")], ["y"], abs)
    with pytest.raises(ValueError, match=r"repeats output names. Received: \['y'\]"):
        export.Signature("s", good.function, good.inputs, ["y", "y"], good.reference)
    with pytest.raises(ValueError, match="distinct names. Received: \\['full', 'full'\\]"):
        export.to_tflite_signatures([good, good], tmp_path / "m.tflite")
    with pytest.raises(TypeError, match="must be a list of keras_llmopt.export.Signature"):
        export.to_tflite_signatures(good, tmp_path / "m.tflite")
    wrong = export.Signature(
        "full", lambda tokens: {"other": model(tokens)}, good.inputs, ["logits"], good.reference
    )
    with pytest.raises(ValueError, match=r"returned outputs \['other'\]. Accepted: exactly"):
        export.to_tflite_signatures([wrong], tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_dynamic_int8_signatures_use_the_mode_tolerance(tmp_path):
    model = _model()
    signatures = _signatures(model)
    result = export.to_tflite_signatures(signatures, tmp_path / "q.tflite", "dynamic_int8")
    assert result.verification.passed and result.quantization == "dynamic_int8"
    assert result.verification["full"]["logits"].tolerance["atol"] is None
    # The head (16 x 64) is large enough for the converter to store it as int8.
    assert "float32,int8" in result.summary["matmul_inputs"]["FULLY_CONNECTED"]


# Every .tflite we write is named: serving_default, the model's inputs, "output".


def _serving(path):
    listed = _signature_list(path)
    assert list(listed) == ["serving_default"], listed
    return sorted(listed["serving_default"]["inputs"]), listed["serving_default"]["outputs"]


@pytest.mark.parametrize("quantization", [None, "int4"])
def test_reference_gpt_file_is_named(quantization, tmp_path):
    path = tmp_path / "gpt.tflite"
    # (An untrained GPT's flat logits do not survive int4 weights' top-1 check.)
    verify = quantization is None
    report = export.to_tflite(
        reference.build_gpt("tiny"), path, quantization, sequence_length=16, verify=verify
    )
    assert _serving(path) == (["tokens"], ["output"])
    assert report.summary["signatures"]["serving_default"]["outputs"] == ["output"]


def test_uncompacted_file_is_named_too(tmp_path):
    path = tmp_path / "gpt.tflite"
    model = reference.build_gpt("tiny")
    export.to_tflite(model, path, sequence_length=16, compact_file=False, verify=False)
    assert _serving(path) == (["tokens"], ["output"])
    runner = export.load_runner(path)
    tokens = np.zeros((1, 16), "int32")
    np.testing.assert_allclose(
        runner.run_signature("serving_default", {"tokens": tokens})["output"],
        _numpy(model(tokens)),
        atol=1e-4,
    )


def test_qat_int8_file_is_named(tmp_path):
    from keras_llmopt import quantization

    keras.utils.set_random_seed(0)
    qat = quantization.quantize_model(reference.build_gpt("tiny"))
    path = tmp_path / "qat.tflite"
    report = export.to_tflite(qat, path, quantization="int8", sequence_length=16, verify=False)
    assert any("QAT" in note for note in report.notes), report.notes
    assert _serving(path) == (["tokens"], ["output"])
    assert set(report.summary["matmul_inputs"]["FULLY_CONNECTED"]) == {"int8,int8"}


def test_kerashub_file_is_named(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=100,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    path = tmp_path / "hub.tflite"
    export.to_tflite(lm, path)  # the length comes from the position embedding
    assert _serving(path) == (["padding_mask", "token_ids"], ["output"])
    with pytest.raises(ValueError, match="Received: sequence_length=17; accepted: at most 16"):
        export.to_tflite(lm, tmp_path / "long.tflite", sequence_length=17)
    assert os.listdir(tmp_path) == ["hub.tflite"]
