"""One-shot compression of the trained reference GPT from 128 calibration windows, no training.

Compresses with each method, prints bits per byte against the dense model, then writes
the GPTQ int4 model as a verified ``.tflite`` that stores exactly the grid GPTQ chose.

    python examples/oneshot_gpt.py --preset=small --out=/tmp/oneshot

Rows: magnitude (the baseline), Wanda and SparseGPT at 50 % and 2:4, GPTQ int4 (groups
of 128 on ``small``), AWQ int4 and SparseGPT 50 % followed by GPTQ int4 in one pass.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from keras_llmopt import export, llm, reference  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset (tiny or small).")
SAMPLES = flags.DEFINE_integer("num_samples", 128, "Calibration windows.")
OUT = flags.DEFINE_string("out", "oneshot_out", "Folder for the int4 .tflite.")


def recipes(group_size):
    """The configs compared, by row name."""
    return {
        "magnitude 50%": llm.Magnitude(0.5),
        "wanda 50%": llm.Wanda(0.5),
        "sparsegpt 50%": llm.SparseGPT(0.5),
        "magnitude 2:4": llm.Magnitude(m_by_n=(2, 4)),
        "wanda 2:4": llm.Wanda(m_by_n=(2, 4)),
        "sparsegpt 2:4": llm.SparseGPT(m_by_n=(2, 4)),
        "gptq int4": llm.GPTQ(bits=4, group_size=group_size),
        "awq int4": llm.AWQ(bits=4, group_size=group_size),
        "sparsegpt 50% + gptq int4": [
            llm.SparseGPT(0.5),
            llm.GPTQ(bits=4, group_size=group_size),
        ],
    }


def main(argv):
    del argv
    config = reference.GPTConfig.preset(PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    model = reference.trained_model(PRESET.value, corpus=corpus)
    calibration = corpus.train[: SAMPLES.value, :-1].astype("int32")
    dense = reference.evaluate(model, corpus).bpb
    widths = (config.d_model, config.mlp_dim)  # a group size must divide every input width
    group_size = next(g for g in (128, 64, 32) if all(w % g == 0 for w in widths))
    print(f"dense bpb {dense:.4f}")
    compressed = {}
    for name, recipe in recipes(group_size).items():
        out = llm.oneshot(model, calibration, recipe, num_samples=SAMPLES.value)
        compressed[name] = out
        bpb = reference.evaluate(out, corpus).bpb
        seconds = out.oneshot_report.seconds
        print(f"{name:28s} bpb {bpb:.4f}  delta {bpb - dense:+.4f}  {seconds:.1f} s")
    os.makedirs(OUT.value, exist_ok=True)
    path = os.path.join(OUT.value, "gptq_int4.tflite")
    result = export.to_tflite(
        compressed["gptq int4"], path, quantization="int4", block_size=group_size
    )
    print(f"wrote {path}: {result.size_bytes} bytes, verified={result.verification.passed}")


if __name__ == "__main__":
    app.run(main)
