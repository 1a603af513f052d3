"""Generator files: LiteRT-LM signatures, verified round trips in every mode, the runner."""

import collections
import os

import keras
import numpy as np
import pytest

from keras_llmopt import export, generation, quantization, reference
from keras_llmopt._src.benchmark import matrix_models

CACHE = 32


def _matmul_input_dtypes(path):
    """``Counter((subgraph, op, input dtypes))`` over every subgraph of the file."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(open(path, "rb").read(), 0)
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    found = collections.Counter()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            if name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
                dtypes = tuple(types[subgraph.Tensors(op.Inputs(k)).Type()] for k in (0, 1))
                found[(subgraph.Name().decode(), name, dtypes)] += 1
    return found


def _tensor_names(path):
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(open(path, "rb").read(), 0)
    return [
        model.Subgraphs(g).Tensors(t).Name().decode()
        for g in range(model.SubgraphsLength())
        for t in range(model.Subgraphs(g).TensorsLength())
    ]


def _signature_io(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    found = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        found[key] = (
            {
                k: (tuple(d["shape"]), d["dtype"].__name__)
                for k, d in runner.get_input_details().items()
            },
            {k: tuple(d["shape"]) for k, d in runner.get_output_details().items()},
        )
    return found


def test_fp32_generator_has_the_litert_lm_signatures_and_greedy_parity(tmp_path):
    model = reference.build_gpt("tiny", seed=0)
    path = tmp_path / "gen.tflite"
    report = export.to_tflite_generator(model, path, cache_length=CACHE, prefill_lengths=(8, 1))
    assert report.verification.passed and report.summary["generator"]["greedy_agreement"] == 1.0
    io = _signature_io(path)
    assert sorted(io) == ["decode", "prefill_1", "prefill_8"]
    inputs, outputs = io["prefill_8"]
    assert inputs["tokens"] == ((1, 8), "int32") and inputs["input_pos"] == ((8,), "int32")
    assert inputs["mask"] == ((1, 1, 8, CACHE), "float32")
    assert inputs["kv_cache_k_1"] == ((1, CACHE, 2, 32), "float32")
    assert "logits" not in outputs and set(outputs) == {k for k in inputs if k.startswith("kv_")}
    inputs, outputs = io["decode"]
    assert inputs["tokens"] == ((1, 1), "int32") and outputs["logits"] == (1, 1, 256)
    # Greedy tokens of the file equal generation.generate up to the full cache.
    runner = export.load_generator(path)
    prompt = np.array([[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108]], "int32")  # 11 > 8
    produced = runner.generate(prompt, CACHE - prompt.shape[1])
    np.testing.assert_array_equal(produced, generation.generate(model, prompt, CACHE - 11))
    stats = runner.last_stats
    assert stats["prompt_tokens"] == 10 and stats["new_tokens"] == CACHE - 11
    assert stats["decode_tokens_per_second"] > 0 and stats["prefill_tokens_per_second"] > 0
    # The same seed samples the same tokens in Keras and in the file.
    kwargs = dict(sampler="top_k", top_k=5, temperature=1.5, seed=11)
    np.testing.assert_array_equal(
        runner.generate(prompt, 8, **kwargs), generation.generate(model, prompt, 8, **kwargs)
    )


def _buffer_bytes(path):
    from tensorflow.lite.python import schema_py_generated as schema

    data = open(path, "rb").read()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    return sum(len(b.data) for b in model.buffers if b.data is not None)


def test_a_remainder_that_cannot_be_padded_goes_through_decode(trained_tiny, tmp_path):
    path = tmp_path / "gen.tflite"
    export.to_tflite_generator(trained_tiny, path, cache_length=12, prefill_lengths=(8,))
    runner = export.load_generator(path)
    # 10 prompt tokens to prefill: one bucket of 8, then 2 that padding to 8 would push
    # past the 12 cache positions, so they are written by decode steps.
    prompt = np.asarray([[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108]], "int32")
    expected = generation.generate(trained_tiny, prompt, 1)
    np.testing.assert_array_equal(runner.generate(prompt, 1), expected)
    short = prompt[:, :4]  # 3 tokens, padded to the bucket of 8
    np.testing.assert_array_equal(
        runner.generate(short, 8), generation.generate(trained_tiny, short, 8)
    )


def test_the_generator_file_stores_the_weights_once(tmp_path):
    model = reference.build_gpt("tiny", seed=0)
    fixed = export.to_tflite(model, tmp_path / "fixed.tflite", sequence_length=CACHE)
    generator = export.to_tflite_generator(
        model, tmp_path / "gen.tflite", cache_length=CACHE, prefill_lengths=(16, 4, 1)
    )
    # Four signatures share one copy of the weights: the constant data is no larger
    # than the fixed-window file's; only the four op tables add bytes (~10 KB each).
    assert _buffer_bytes(tmp_path / "gen.tflite") <= 1.02 * _buffer_bytes(tmp_path / "fixed.tflite")
    assert generator.size_bytes <= fixed.size_bytes + 4 * 16_000


@pytest.mark.parametrize("mode", ["float16", "dynamic_int8", "int4"])
def test_quantized_generators_round_trip_against_keras(trained_tiny, tiny_corpus, tmp_path, mode):
    path = tmp_path / f"{mode}.tflite"
    # Int4 on the tiny model (width 64) agrees ~0.8-0.9 top-1 with fp32, fixed-window files
    # included; the mode's default (0.85) is for wider models.
    kwargs = {"block_size": 32, "tolerance": {"top1": 0.75}} if mode == "int4" else {}
    report = export.to_tflite_generator(
        trained_tiny,
        path,
        cache_length=CACHE,
        quantization=mode,
        verification_data=tiny_corpus.validation[:2],
        **kwargs,
    )
    assert report.verification.passed
    assert report.summary["generator"]["greedy_agreement"] >= (0.75 if mode == "int4" else 0.85)
    fp32_bytes = 4 * trained_tiny.count_params()
    assert (
        report.size_bytes < {"float16": 0.65, "dynamic_int8": 0.4, "int4": 0.4}[mode] * fp32_bytes
    )
    dtypes = _matmul_input_dtypes(path)
    if mode == "int4":  # names shortened, unique model-wide, before the quantizer ran
        names = _tensor_names(path)
        assert len(names) == len(set(names)) and not any("/" in n for n in names), names[:9]
    weights = {"dynamic_int8": "int8", "int4": "int4"}.get(mode)
    if weights:  # every signature's dense layers read the quantized weights
        for signature in ("decode", "prefill_4", "prefill_16"):
            assert dtypes[(signature, "FULLY_CONNECTED", ("float32", weights))] >= 8, dtypes


def test_qat_generator_is_full_integer_in_both_signatures(trained_tiny, tiny_corpus, tmp_path):
    model = quantization.quantize_model(trained_tiny)
    x, y = reference.make_batches(tiny_corpus.train, 8, 12, seed=1)
    model.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    path = tmp_path / "qat.tflite"
    report = export.to_tflite_generator(
        model,
        path,
        cache_length=CACHE,
        quantization="int8",
        verification_data=tiny_corpus.validation[:2],
    )
    assert report.summary["generator"]["greedy_agreement"] >= 0.9
    dtypes = _matmul_input_dtypes(path)
    # Every matmul of every signature (decode and each prefill bucket) reads int8.
    assert {(op, inputs) for _, op, inputs in dtypes} == {
        ("FULLY_CONNECTED", ("int8", "int8")),
        ("BATCH_MATMUL", ("int8", "int8")),
    }
    signatures = {"decode", "prefill_4", "prefill_16"}  # the default buckets
    for op in ("FULLY_CONNECTED", "BATCH_MATMUL"):
        assert {s for s, o, _ in dtypes if o == op} == signatures, dtypes
    assert not report.summary["float_matmuls"]


def test_strict_int8_generator_names_a_float_matmul_in_each_signature(trained_tiny, tmp_path):
    model = quantization.quantize_model(trained_tiny, ignore=["block_0_mlp_down"])
    path = tmp_path / "qat.tflite"
    with pytest.raises(ValueError, match="allow_float_ops=True") as raised:
        export.to_tflite_generator(
            model, path, cache_length=16, prefill_lengths=(4,), quantization="int8", verify=False
        )
    # The float layer is found in the prefill subgraph too, not only the first one (the
    # head, which prefill does not run, would be in decode only).
    for signature in ("decode", "prefill"):  # one prefill length: plain "prefill"
        assert f"block_0_mlp_down' in '{signature}'" in str(raised.value), raised.value
    assert not path.exists()


def _counting_model(vocab=16, length=32):
    config = reference.GPTConfig(
        sequence_length=length, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, vocab_size=vocab
    )
    model = reference.build_gpt(config, seed=0)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, vocab, (256, 1))
    windows = ((starts + np.arange(length + 1)) % vocab).astype("int32")
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(windows[:, :-1], windows[:, 1:], batch_size=32, epochs=12, verbose=0)
    return model


def test_a_model_trained_to_count_continues_the_sequence_from_the_file(tmp_path):
    model = _counting_model()
    path = tmp_path / "count.tflite"
    export.to_tflite_generator(model, path, cache_length=32, prefill_lengths=(4, 1))
    produced = export.load_generator(path).generate([[5, 6, 7]], 20)
    np.testing.assert_array_equal(produced[0], (5 + np.arange(23)) % 16)


def test_keras_hub_llama_generator_round_trips(tmp_path):
    model = matrix_models.MODELS["llama"].build()
    path = tmp_path / "llama.tflite"
    report = export.to_tflite_generator(model, path, cache_length=16, prefill_lengths=(4, 1))
    assert report.summary["generator"]["decoder"] == "keras_hub"
    assert _signature_io(path)["decode"][0]["kv_cache_k_0"][0] == (1, 16, 2, 8)  # GQA: 2 kv heads
    prompt = [[3, 1, 4, 1, 5, 9]]
    np.testing.assert_array_equal(
        export.load_generator(path).generate(prompt, 10), generation.generate(model, prompt, 10)
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_keras_hub_qat_generators_are_full_integer_in_every_signature(tmp_path, family):
    # GPT-2 attends with Keras's MultiHeadAttention (its cache is read back through the
    # key/value projections' quantizers); Llama with inline einsums.
    from keras_llmopt._src.benchmark.matrix_cells import RowContext

    ctx = RowContext(matrix_models.MODELS[family].build(), str(tmp_path))
    ctx.warm_up(40)
    q = ctx.qat_model()
    path = tmp_path / "qat.tflite"
    report = export.to_tflite_generator(
        q, path, cache_length=16, prefill_lengths=(4,), quantization="int8"
    )
    assert report.verification.passed and not report.summary["float_matmuls"]
    dtypes = _matmul_input_dtypes(path)
    assert {inputs for _, _, inputs in dtypes} == {("int8", "int8")}, dtypes
    assert {s for s, op, _ in dtypes if op == "BATCH_MATMUL"} == {"decode", "prefill"}


def test_cache_overflow_and_bad_arguments_are_clear_errors(tmp_path):
    model = reference.build_gpt("tiny", seed=0)
    path = tmp_path / "gen.tflite"
    export.to_tflite_generator(model, path, cache_length=16, prefill_lengths=(4, 1))
    runner = export.load_generator(path)
    with pytest.raises(ValueError, match=r"exceed the cache length of .*\(16\)"):
        runner.generate([[1, 2, 3, 4]], 13)
    with pytest.raises(ValueError, match="needs top_k="):
        runner.generate([[1]], 2, sampler="top_k")
    with pytest.raises(ValueError, match=r"exceeds the model's longest sequence \(64\)"):
        export.to_tflite_generator(model, tmp_path / "x.tflite", cache_length=65)
    with pytest.raises(ValueError, match="prefill_lengths"):
        export.to_tflite_generator(
            model, tmp_path / "x.tflite", cache_length=8, prefill_lengths=(8,)
        )
    with pytest.raises(ValueError, match="for a generator file"):
        export.to_tflite_generator(
            model, tmp_path / "x.tflite", cache_length=8, quantization="int16x8"
        )
    with pytest.raises(ValueError, match="needs calibration"):
        export.to_tflite_generator(
            model, tmp_path / "x.tflite", cache_length=8, quantization="int8"
        )
    # A model without attention decodes (no cache needed) but has no cache to export.
    with pytest.raises(ValueError, match="'sequential_lm' has no attention layer.*to_tflite"):
        export.to_tflite_generator(
            matrix_models.sequential_lm(), tmp_path / "x.tflite", cache_length=8
        )
    assert not os.path.exists(tmp_path / "x.tflite")


def test_a_failed_verification_leaves_no_file_and_keeps_the_old_one(tmp_path):
    model = reference.build_gpt("tiny", seed=0)
    path = tmp_path / "gen.tflite"
    with pytest.raises(export.VerificationError, match="Nothing was written"):
        export.to_tflite_generator(
            model,
            path,
            cache_length=16,
            prefill_lengths=(4, 1),
            quantization="float16",
            tolerance={"atol": 0.0, "rtol": 0.0},
        )
    assert not path.exists() and not list(tmp_path.iterdir())
    path.write_bytes(b"old")
    with pytest.raises(export.VerificationError):
        export.to_tflite_generator(
            model,
            path,
            cache_length=16,
            prefill_lengths=(4, 1),
            quantization="float16",
            tolerance={"atol": 0.0, "rtol": 0.0},
        )
    assert path.read_bytes() == b"old"


def test_litertlm_of_the_reference_gpt_generates_our_runners_text_in_the_engine(
    trained_tiny, tiny_corpus, tmp_path
):
    import litert_lm

    path = tmp_path / "gpt.litertlm"
    report = export.to_litertlm(
        trained_tiny, path, cache_length=48, verification_data=tiny_corpus.validation[:2]
    )
    texts = report.summary["litertlm"]
    assert texts["engine_text"] and texts["runner_text"].startswith(texts["engine_text"])
    assert report.format == "litertlm" and report.size_bytes == os.path.getsize(path)
    # Independently of the exporter's own check: the engine's greedy text from a prompt
    # equals load_generator's on the same token ids (start token 10 first).
    prompt = "import os\n"
    engine = litert_lm.Engine(str(path), backend=litert_lm.Backend.CPU, max_num_tokens=48)
    try:
        session = engine.create_session(apply_prompt_template=False)
        session.run_prefill([prompt])
        engine_text = session.run_decode().texts[0]
    finally:
        engine.close()
    ids = [10] + list(prompt.encode())
    generator = tmp_path / "gpt.tflite"
    export.to_tflite_generator(
        trained_tiny, generator, cache_length=48, verification_data=tiny_corpus.validation[:2]
    )
    ours = export.load_generator(generator).generate([ids], 48 - len(ids), stop_token_ids=[0])
    text = bytes(int(t) for t in ours[0, len(ids) :] if int(t) != 0).decode("utf-8", "replace")
    assert engine_text and text.startswith(engine_text), (engine_text, text)
