import numpy as np
import pytest

from keras_llmopt import export

keras_hub = pytest.importorskip("keras_hub")


def _gpt2():
    import keras

    keras.utils.set_random_seed(0)
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=300,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=32,
    )


def _llama():
    import keras

    keras.utils.set_random_seed(0)
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=300,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=32,
        intermediate_dim=64,
    )


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_kerashub_backbone_fixed_length(build, tmp_path):
    model = build()
    report = export.to_tflite(model, tmp_path / "m.tflite", sequence_length=16)
    names = sorted(name for name, _, _ in report.summary["inputs"])
    assert names == ["padding_mask", "token_ids"]
    assert all(shape == (1, 16) for _, _, shape in report.summary["inputs"])
    # The weights are in the file: at least ~4 bytes per parameter, not the 45 KB shell.
    assert 0.6 * 4 * model.count_params() <= report.size_bytes <= 1.3 * 4 * model.count_params()
    assert "VAR_HANDLE" not in report.summary["ops"]
    assert report.verification.passed and report.verification.max_abs_error < 1e-3
    tokens = np.random.default_rng(0).integers(0, 300, (2, 16)).astype(np.int32)
    mask = np.ones_like(tokens)
    expected = np.asarray(model({"token_ids": tokens, "padding_mask": mask}))
    got = export.load_runner(report.path)({"token_ids": tokens, "padding_mask": mask})
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_llama_needs_a_sequence_length(tmp_path):
    with pytest.raises(ValueError, match="pass sequence_length=N"):
        export.to_tflite(_llama(), tmp_path / "m.tflite")
