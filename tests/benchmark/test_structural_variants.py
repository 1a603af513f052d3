"""The benchmark's structural rows on the tiny GPT: built, verified, smaller, saying what went."""

import os
import types

import numpy as np
import pytest

from keras_llmopt import benchmark, reference
from keras_llmopt._src.benchmark import generator_timing, report, structural_variants, variants

ROWS = (
    "dense_finetune300",
    "struct30_oneshot",
    "struct30_distill300",
    "struct50_oneshot",
    "depth1_oneshot",
    "struct30_distill300_qat_int8",
)
STEPS = 3


@pytest.fixture(scope="module")
def bench(trained_tiny, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("structural_bench")
    calls = []
    real = structural_variants._recover
    mp = pytest.MonkeyPatch()
    mp.setattr(
        structural_variants,
        "_recover",
        lambda ctx, student, teacher: (
            calls.append(teacher is not None) or real(ctx, student, teacher)
        ),
    )
    try:
        result = benchmark.run_benchmark(
            trained_tiny,
            tiny_corpus,
            out,
            variants=list(ROWS),
            eval_windows=16,
            finetune_steps=STEPS,
            latency_warmup=0,
            latency_repeats=1,
            verbose=0,
            progress=False,
            cache=False,  # every model is built in this run, so `calls` counts them
        )
    finally:
        mp.undo()
    return out, {row["variant"]: row for row in result.rows}, calls


def test_every_structural_row_is_registered_and_ours():
    for name in structural_variants.VARIANTS:
        assert name in variants.VARIANTS and name in variants.OPT_IN_VARIANTS, name
        assert name not in benchmark.DEFAULT_VARIANTS, name  # opt-in: they train models
        assert report.is_ours(name) == (name != "dense_finetune300"), name
    assert set(structural_variants.GENERATOR_ROWS) <= set(structural_variants.VARIANTS)


def test_width_plans_hit_their_block_parameter_targets_on_small():
    model = reference.build_gpt("small")
    assert structural_variants.block_parameters(model) == 4 * 789_760
    plans = {f: structural_variants.width_plan(model, f) for f in (0.25, 0.30, 0.50)}
    assert [plans[f]["num_heads"] for f in plans] == [3, 3, 2]
    for fraction, plan in plans.items():
        assert plan["fraction"] == pytest.approx(fraction, abs=0.001), plan
        assert plan["intermediate_dim"] < plan["width"] == 1024
    configs = structural_variants.structural_configs(model, structural_variants.SETTINGS["depth1"])
    assert [c.describe() for c in configs] == ["depth_pruning 1 block(s) by block_influence"]


def test_structural_rows_are_verified_smaller_files(bench):
    _, rows, _ = bench
    fp32 = rows["tflite_fp32"]
    for name in ROWS:
        row = rows[name]
        assert row["error"] is None, row["error"]
        assert row["verified"] and row["runtime"] == "litert", row
    for name in ROWS[1:]:
        assert rows[name]["size_bytes"] < fp32["size_bytes"], name
    assert rows["struct50_oneshot"]["size_bytes"] < rows["struct30_oneshot"]["size_bytes"]
    assert rows["struct30_distill300"]["size_bytes"] == rows["struct30_oneshot"]["size_bytes"]
    assert rows["dense_finetune300"]["size_bytes"] == fp32["size_bytes"]
    # Int8 and 30 % smaller: well under a dense int8 file's ~0.3 of fp32.
    assert rows["struct30_distill300_qat_int8"]["size_bytes"] < 0.3 * fp32["size_bytes"]


def test_row_notes_say_what_was_removed_and_how(bench):
    _, rows, _ = bench
    oneshot = rows["struct30_oneshot"]["notes"][0]
    assert oneshot.startswith("heads 2->1 and MLP 256->204 in every block: 30.0 % of block")
    assert "activation importance (128 windows)" in oneshot and "no training" in oneshot
    assert rows["struct50_oneshot"]["notes"][0].startswith("heads 2->1 and MLP 256->127")
    assert rows["depth1_oneshot"]["notes"][0].startswith("removed 1 of 2 blocks (block_")
    distilled = rows["struct30_distill300"]["notes"][0]
    assert distilled.startswith("heads 2->1 and MLP 256->204")
    assert f"distilled from the dense model for {STEPS} steps" in distilled
    assert rows["dense_finetune300"]["notes"][0].startswith("dense, nothing removed")
    qat = " ".join(rows["struct30_distill300_qat_int8"]["notes"])
    assert "quantization-aware fine-tuned" in qat and "int8 generator" in qat


def test_distilled_rows_are_trained_once_and_compared_with_the_control(bench):
    _, rows, calls = bench
    # struct30 distilled once for its fp32 and QAT rows; the dense control once.
    assert sorted(calls) == [False, True]
    assert rows["struct30_oneshot"]["finetuned"] is False
    for name in ("struct30_distill300", "dense_finetune300", "struct30_distill300_qat_int8"):
        assert rows[name]["finetuned"] is True, name
        assert rows[name]["delta_bpb_vs_control"] is not None, name
    # Distillation trained a copy: the one-shot row's model was left alone.
    assert rows["struct30_distill300"]["bpb"] != rows["struct30_oneshot"]["bpb"]
    assert rows["struct30_oneshot"]["calibration_seconds"] > 0


def test_generator_file_is_written_and_timed(bench, tiny_corpus):
    out, _, _ = bench
    path = generator_timing.generator_path(out / "artifacts", "struct30_distill300_qat_int8")
    assert os.path.exists(path)
    prompt = tiny_corpus.validation[:1, :8].astype("int32")
    timed = generator_timing.time_generators({"s30": path}, prompt, 8, repeats=1, threads=(1,))
    assert timed[0]["decode_tok_s_1t"] > 0 and timed[0]["decode_vs_first_1t"] == 1.0
    assert "| s30 |" in generator_timing.generation_markdown(timed, threads=(1,))


def test_a_generator_missing_the_int8_tolerance_is_kept_and_noted(monkeypatch, tmp_path):
    from keras_llmopt._src.export import generator, verification

    def export(model, path, *, verify=True, **kwargs):
        if verify:
            raise verification.VerificationError("top-1 agreement 0.8 < 0.9 required", None)
        return types.SimpleNamespace(size_bytes=1234, summary={"generator": {}})

    monkeypatch.setattr(generator, "to_tflite_generator", export)
    tokens = np.zeros((2, 8), np.int32)
    ctx = types.SimpleNamespace(
        work_dir=str(tmp_path), sequence_length=8, verification_data=lambda: (tokens, tokens)
    )
    note = generator_timing.export_int8_generator(ctx, None, "row")
    assert "1,234 bytes, exported with verify=False: FAILS (top-1 agreement 0.8" in note


@pytest.mark.slow
def test_every_structural_row_builds(trained_tiny, tiny_corpus, tmp_path):
    result = benchmark.run_benchmark(
        trained_tiny,
        tiny_corpus,
        tmp_path,
        variants=list(structural_variants.VARIANTS),
        eval_windows=8,
        finetune_steps=2,
        latency_warmup=0,
        latency_repeats=1,
        verbose=0,
        progress=False,
    )
    fp32 = result.row("tflite_fp32")["size_bytes"]
    for name in structural_variants.VARIANTS:
        row = result.row(name)
        assert row["error"] is None and row["verified"], row
        if name != "dense_finetune300":
            assert row["size_bytes"] < fp32, name


def test_docstring_examples_run(run_docstring_examples):
    run_docstring_examples("keras_llmopt._src.benchmark.structural_variants")
