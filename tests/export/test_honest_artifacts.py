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


@pytest.fixture(scope="module")
def pruned_tiny():
    """The tiny reference GPT, 50%-pruned (one training-mode call) and stripped."""
    import keras

    from keras_llmopt import reference, sparsity

    keras.utils.set_random_seed(0)
    model = reference.build_gpt("tiny")
    pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned(np.zeros((1, 64), np.int32), training=True)  # step 0: the masks are applied
    assert sparsity.sparsity_report(pruned).pruned_sparsity == pytest.approx(0.5, abs=0.01)
    stripped = sparsity.strip_pruning(pruned)
    by_path = {w.path: w for w in sparsity.sparsity_report(stripped).weights}
    assert by_path["block_0_mlp_up/kernel"].sparsity == pytest.approx(0.5, abs=0.01)
    return model, stripped


def _notes_with(report, text):
    return [note for note in report.notes if text in note]


def test_dense_file_of_a_pruned_model_advises_how_to_shrink_it(pruned_tiny, tmp_path):
    unpruned, pruned = pruned_tiny
    report = export.to_tflite(pruned, tmp_path / "p.tflite", quantization="dynamic_int8")
    (advice,) = _notes_with(report, "of the matmul weights are zeros")
    assert 30 <= int(advice.split("%")[0]) <= 60
    assert "structural pruning" in advice and "sparse=True" in advice
    plain = export.to_tflite(unpruned, tmp_path / "u.tflite", quantization="dynamic_int8")
    assert not _notes_with(plain, "zeros")
    assert abs(report.size_bytes - plain.size_bytes) < 0.1 * plain.size_bytes  # zeros cost


def test_sparse_true_keeps_dense_int8_when_sparse_is_larger_and_loses_xnnpack(
    pruned_tiny, tmp_path
):
    _, pruned = pruned_tiny
    kwargs = {"quantization": "dynamic_int8"}
    dense = export.to_tflite(pruned, tmp_path / "d.tflite", **kwargs)
    chosen = export.to_tflite(pruned, tmp_path / "s.tflite", sparse=True, **kwargs)
    (note,) = _notes_with(chosen, "sparse=True:")
    assert "kept the dense encoding" in note and "not smaller" in note
    assert "XNNPACK delegate refuses it" in note
    assert chosen.summary["xnnpack"] and chosen.summary["sparse_tensors"] == 0
    assert (tmp_path / "s.tflite").read_bytes() == (tmp_path / "d.tflite").read_bytes()
    assert chosen.verification.passed and dense.size_bytes == chosen.size_bytes


def test_sparse_true_keeps_a_smaller_sparse_float_file_and_says_so(pruned_tiny, tmp_path):
    _, pruned = pruned_tiny
    dense = export.to_tflite(pruned, tmp_path / "d.tflite")
    chosen = export.to_tflite(pruned, tmp_path / "s.tflite", sparse=True)
    (note,) = _notes_with(chosen, "sparse=True:")
    assert "kept the sparse encoding" in note
    assert chosen.summary["sparse_tensors"] > 0
    assert chosen.size_bytes < 0.9 * dense.size_bytes and chosen.verification.passed


def test_sparse_advice_docstring_examples(run_docstring_examples):
    run_docstring_examples("keras_llmopt._src.export.sparse_advice")


@pytest.mark.parametrize(
    "sparse_size, sparse_refused, dense_refused, kept, says",
    [
        (90, False, False, "sparse", ["kept the sparse encoding (10% smaller"]),
        (90, True, False, "sparse", ["XNNPACK refuses it", "pass sparse=False if speed"]),
        (90, True, True, "sparse", ["kept the sparse encoding"]),
        (100, False, False, "dense", ["not smaller", "kept the dense encoding"]),
        (120, True, False, "dense", ["(120 B) is not smaller", "XNNPACK delegate refuses"]),
    ],
)
def test_choose_encoding_keeps_the_smaller_and_says_why(
    monkeypatch, sparse_size, sparse_refused, dense_refused, kept, says
):
    from keras_llmopt._src.export import runtime, sparse_advice

    sparse, dense = b"s" * sparse_size, b"d" * 100
    refused = {sparse: sparse_refused, dense: dense_refused}
    monkeypatch.setattr(runtime, "xnnpack_error", lambda c: "delegate" if refused[c] else None)
    content, note = sparse_advice.choose_encoding(sparse, dense)
    assert content == (sparse if kept == "sparse" else dense)
    for text in says:
        assert text in note
    assert ("XNNPACK" in note) == (sparse_refused and (kept == "dense" or not dense_refused))
