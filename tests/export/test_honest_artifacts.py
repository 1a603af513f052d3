"""Honest artifacts: files other tools can read, and exports that say what they hold."""

import contextlib
import io

import numpy as np
import pytest

from keras_llmopt import export

pytest.importorskip("ai_edge_quantizer")


def _tensor_names(path):
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as handle:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(handle.read(), 0))
    return [[t.name for t in subgraph.tensors] for subgraph in model.subgraphs]


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    """A compacted fp32 ``.tflite`` of the tiny reference GPT, and the model."""
    import keras

    from keras_llmopt import reference

    keras.utils.set_random_seed(0)
    model = reference.build_gpt("tiny")
    path = tmp_path_factory.mktemp("fp32") / "gpt.tflite"
    report = export.to_tflite(model, path)
    assert report.summary["compaction"]["reason"] is None
    return model, str(path)


def test_every_tensor_name_of_a_compacted_file_is_unique_and_non_empty(fp32_file):
    _, path = fp32_file
    for names in _tensor_names(path):
        assert len(names) > 20
        assert all(names) and len(set(names)) == len(names)
    assert any(b"tokens" in name for name in _tensor_names(path)[0])  # exposed names kept


@pytest.mark.parametrize(
    "recipe_name, top1", [("dynamic_wi8_afp32", 0.9), ("weight_only_wi4_afp32", None)]
)
def test_ai_edge_quantizer_runs_on_our_compacted_fp32_file(fp32_file, recipe_name, top1):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    model, path = fp32_file
    with contextlib.redirect_stdout(io.StringIO()):
        result = quantizer.Quantizer(path, getattr(recipe, recipe_name)()).quantize()
    content = bytes(result.quantized_model)
    with open(path, "rb") as handle:
        assert len(content) < 0.5 * len(handle.read())  # the weights were requantized
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    tokens = np.random.default_rng(0).integers(0, 256, (1, 64)).astype(np.int32)
    produced = interpreter.get_signature_runner()(tokens=tokens)["output"]
    expected = np.asarray(model(tokens))
    assert produced.shape == expected.shape and np.isfinite(produced).all()
    if top1 is not None:
        assert (produced.argmax(-1) == expected.argmax(-1)).mean() >= top1


def test_benchmark_aeq_variant_builds_from_our_fp32_file(tiny_corpus, tmp_path):
    import keras

    from keras_llmopt import reference
    from keras_llmopt._src.benchmark import variants as variants_lib

    keras.utils.set_random_seed(0)
    model = reference.build_gpt("tiny")
    ctx = variants_lib.BenchmarkContext(
        model=model,
        config=reference.GPTConfig.preset("tiny"),
        corpus=tiny_corpus,
        work_dir=str(tmp_path),
        verify_windows=4,
    )
    built = variants_lib.VARIANTS["aeq_dynamic_int8"](ctx)
    fp32 = variants_lib.tflite_fp32_shared(ctx)
    assert built.path == str(tmp_path / "aeq_dynamic_int8.tflite")
    assert built.size_bytes < 0.5 * fp32.size_bytes
    assert built.verification is not None and built.verification.num_positions > 0
    assert built.verification.passed
    inputs, _ = ctx.verification_data()
    assert export.load_runner(built.path)(inputs).shape == (len(inputs), inputs.shape[1], 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "aeq_dynamic_int8.tflite",
        "tflite_fp32.tflite",
    ]
