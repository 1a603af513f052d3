"""Reference GPT -> QAT int8 -> generator file -> streamed text, with the tokens/s table.

The trained reference GPT (cached after the first run) gets a short quantization-aware
fine-tune, then ``export.to_tflite_generator`` writes one full-integer int8 ``.tflite``
with LiteRT-LM signatures (``prefill_<L>``, ``decode``, KV caches as inputs and outputs),
verified against the QAT Keras model. The file streams text from a prompt through
``export.load_generator``; the fp32 generator file and Keras's own cached generation are
timed beside it, at 1 and 2 threads.

Run:
    python examples/generate_on_device.py --preset=small --prompt="import os" --sampler=greedy
    python examples/generate_on_device.py --preset=tiny --qat_steps=20
"""

import codecs
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from keras_llmopt import export, generation, quantization, reference  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset.")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps (default: preset's).")
QAT_STEPS = flags.DEFINE_integer("qat_steps", 60, "QAT fine-tune steps.")
PROMPT = flags.DEFINE_string("prompt", "class Queue:\n    def __init__(self", "Prompt text.")
# A 3M-parameter byte model loops under greedy decoding; a seeded top-k sample reads
# more like code (--sampler=greedy shows the loop).
SAMPLER = flags.DEFINE_enum("sampler", "top_k", ["greedy", "top_k", "top_p"], "Sampler.")
TOP_K = flags.DEFINE_integer("top_k", 5, "top_k: tokens kept.")
TOP_P = flags.DEFINE_float("top_p", 0.9, "top_p: probability mass kept.")
SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
NEW_TOKENS = flags.DEFINE_integer("new_tokens", 96, "Tokens to generate.")
OUT = flags.DEFINE_string("out", None, "Where to keep the int8 generator (default: a temp dir).")


def main(argv):
    del argv
    config = reference.GPTConfig.preset(PRESET.value)
    corpus = reference.load_corpus(config.sequence_length)
    model = reference.trained_model(PRESET.value, steps=TRAIN_STEPS.value, corpus=corpus)
    logging.info("QAT fine-tune: %d steps", QAT_STEPS.value)
    qat = quantization.quantize_model(model)
    x, y = reference.make_batches(corpus.train, 16, QAT_STEPS.value, seed=1)
    qat.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.fit(x, y, batch_size=16, shuffle=False, verbose=0)

    folder = tempfile.mkdtemp(prefix="klo_generate_")
    int8_path = OUT.value or os.path.join(folder, "gpt_int8_generator.tflite")
    fp32_path = os.path.join(folder, "gpt_fp32_generator.tflite")
    cache = config.sequence_length
    verify_on = corpus.validation[:2]
    int8 = export.to_tflite_generator(
        qat, int8_path, cache_length=cache, quantization="int8", verification_data=verify_on
    )
    fp32 = export.to_tflite_generator(
        model, fp32_path, cache_length=cache, verification_data=verify_on
    )

    prompt = np.frombuffer(PROMPT.value.encode("utf-8"), np.uint8).astype("int32")[None]
    new = min(NEW_TOKENS.value, cache - prompt.shape[1])
    runner = export.load_generator(int8_path, num_threads=2)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    print(f"\n--- streamed from {os.path.basename(int8_path)} (int8, {int8.size_bytes:,} bytes)")
    sys.stdout.write(PROMPT.value)
    sampling = {"sampler": SAMPLER.value, "seed": SEED.value}
    if SAMPLER.value == "top_k":
        sampling["top_k"] = TOP_K.value
    elif SAMPLER.value == "top_p":
        sampling["top_p"] = TOP_P.value
    for token in runner.stream(prompt, new, **sampling):
        sys.stdout.write(decoder.decode(bytes([int(token[0])])))
        sys.stdout.flush()
    print(decoder.decode(b"", final=True) + "\n---")

    rows = []
    for name, path, size in (
        ("int8 generator (QAT)", int8_path, int8.size_bytes),
        ("fp32 generator", fp32_path, fp32.size_bytes),
    ):
        row = {"variant": name, "size": size}
        for threads in (1, 2):
            timed = export.load_generator(path, num_threads=threads)
            timed.generate(prompt, new)  # warm up
            timed.generate(prompt, new)
            row[f"prefill {threads}t"] = timed.last_stats["prefill_tokens_per_second"]
            row[f"decode {threads}t"] = timed.last_stats["decode_tokens_per_second"]
        rows.append(row)
    generation.generate(model, prompt, new)  # trace
    started = time.perf_counter()
    generation.generate(model, prompt, new)
    keras_rate = new / (time.perf_counter() - started)
    rows.append({"variant": "Keras generation.generate (TF, cached)", "decode 2t": keras_rate})

    columns = ["variant", "size", "prefill 1t", "decode 1t", "prefill 2t", "decode 2t"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [row.get(c) for c in columns]
        print("| " + " | ".join(_cell(v) for v in cells) + " |")
    print(
        f"(tokens/s; prompt {prompt.shape[1]} tokens, {new} new; int8 file "
        f"{int8.size_bytes / fp32.size_bytes:.2f}x the fp32 file)"
    )


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


if __name__ == "__main__":
    app.run(main)
