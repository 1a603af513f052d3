"""Benchmark quantization-aware training on the reference GPT: step-time ratio QAT / dense.

The QAT twin of ``benchmark_pruning.py``, with the same method: the dense model and
its ``keras_llmopt.quantization.quantize_model`` copy train side by side, each timed in
segments after a warm-up, the variants in alternation so that load from other
processes falls on both alike; the median segment gives the step time, printed for
wall time and for the process's CPU time (all threads), which load from other
processes inflates far less (on a shared machine, read the CPU ratio).

    python scripts/benchmark_qat.py --preset=small
    python scripts/benchmark_qat.py --preset=small --segments=3 --time_steps=30
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from keras_llmopt import benchmark  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset.")
SCHEME = flags.DEFINE_string("scheme", "default_8bit", "quantize_model scheme.")
TIME_STEPS = flags.DEFINE_integer("time_steps", 60, "Timed training steps per segment.")
SEGMENTS = flags.DEFINE_integer("segments", 5, "Timed segments (median is reported).")
BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size.")


def _segment_fn(model, x, y):
    import keras

    from keras_llmopt import reference

    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=reference.lm_loss())
    batch = BATCH.value

    def fit_segment(n):
        model.fit(
            x[: n * batch], y[: n * batch], batch_size=batch, epochs=1, shuffle=False, verbose=0
        )

    return fit_segment


def main(argv):
    del argv
    from keras_llmopt import quantization, reference

    config = reference.GPTConfig.preset(PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    n = TIME_STEPS.value * BATCH.value
    x, y = reference.make_batches(corpus.train, BATCH.value, TIME_STEPS.value, seed=1)
    x, y = x[:n], y[:n]

    # trained_model loads a fresh copy from the cache each call.
    dense = reference.trained_model(PRESET.value, corpus=corpus)
    qat = quantization.quantize_model(
        reference.trained_model(PRESET.value, corpus=corpus), scheme=SCHEME.value
    )
    times = benchmark.interleaved_step_times(
        {"dense": _segment_fn(dense, x, y), "qat": _segment_fn(qat, x, y)},
        SEGMENTS.value,
        TIME_STEPS.value,
    )
    d, q = times["dense"], times["qat"]
    spread = [qc / dc for (_, qc), (_, dc) in zip(q["segments"], d["segments"], strict=True)]
    print(
        f"keras_llmopt QAT ({SCHEME.value}) step time: dense {d['wall'] * 1e3:.1f} ms, "
        f"QAT {q['wall'] * 1e3:.1f} ms, ratio {q['wall'] / d['wall']:.3f}; CPU time: dense "
        f"{d['cpu'] * 1e3:.1f} ms, QAT {q['cpu'] * 1e3:.1f} ms, ratio {q['cpu'] / d['cpu']:.3f} "
        f"(per-segment CPU ratios {min(spread):.3f}-{max(spread):.3f})"
    )


if __name__ == "__main__":
    app.run(main)
