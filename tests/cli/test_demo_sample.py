"""The demo's closing sample: which artifact it picks, and the text it prints."""

import numpy as np

from keras_llmopt._src.cli import demo_sample


def _row(variant, size, bpb, verified=True, ext=".tflite"):
    return {
        "variant": variant,
        "artifact": f"/x/{variant}{ext}",
        "size_bytes": size,
        "bpb": bpb,
        "verified": verified,
    }


def test_best_is_the_smallest_verified_file_close_to_fp32():
    rows = [
        {"variant": "keras_fp32", "artifact": None, "size_bytes": 400, "bpb": 1.99},
        _row("tflite_fp32", 100, 2.00),
        _row("tflite_fp16", 50, 2.00),
        _row("klo_qat_int8", 30, 2.03),
        _row("klo_int4", 15, 2.30),  # smaller, but too far from fp32
        _row("aeq_int4", 20, 2.01),  # an anchor: ours come first
        _row("broken", 10, 2.00, verified=False),  # failed verification
        _row("onnx_int8", 5, 2.00, ext=".onnx"),  # not a LiteRT file
    ]
    assert demo_sample.best_compressed_row(rows)["variant"] == "klo_qat_int8"
    assert demo_sample.best_compressed_row(rows, max_delta_bpb=0.5)["variant"] == "klo_int4"
    anchors_only = [r for r in rows if not r["variant"].startswith("klo_")]
    assert demo_sample.best_compressed_row(anchors_only)["variant"] == "aeq_int4"


def test_best_falls_back_to_the_lowest_bpb_and_may_be_none():
    rows = [_row("tflite_fp32", 100, 2.0), _row("klo_a", 40, 2.5), _row("klo_b", 20, 2.2)]
    assert demo_sample.best_compressed_row(rows)["variant"] == "klo_b"
    assert demo_sample.best_compressed_row([_row("tflite_fp32", 100, 2.0)]) is None
    # A file larger than fp32 is not a compressed one, in either order.
    assert (
        demo_sample.best_compressed_row([_row("big", 200, 1), _row("tflite_fp32", 100, 2)]) is None
    )
    assert (
        demo_sample.best_compressed_row([_row("tflite_fp32", 100, 2), _row("big", 200, 1)]) is None
    )


def test_sample_is_the_greedy_continuation_of_the_file(trained_tiny, tmp_path):
    from keras_llmopt import export, generation

    path = str(tmp_path / "tiny.tflite")
    export.to_tflite(trained_tiny, path)
    prompt = b"def main(args):\n    "
    prompt_text, text, rate = demo_sample.sample_text(path, prompt, 12, sampler="greedy")
    assert prompt_text == prompt.decode() and rate > 0
    ids = np.frombuffer(prompt, np.uint8).astype("int32")[None]
    keras_ids = generation.generate(trained_tiny, ids, 12)[0, len(prompt) :]
    assert text == bytes(keras_ids.tolist()).decode("utf-8", "replace")
    # The demo's seeded top-k sample is reproducible.
    again = [demo_sample.sample_text(path, prompt, 12, **demo_sample.SAMPLING)[1] for _ in "ab"]
    assert again[0] == again[1]
