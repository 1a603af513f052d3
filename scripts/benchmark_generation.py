"""Generation speed and fidelity of every generator variant, beside its baselines, in one run.

The reference GPT (trained, cached) is exported as a generator file in each mode: fp32,
float16, dynamic int8, QAT int8 (a short QAT fine-tune), int4 (blocks of 32) and 50 %
magnitude-pruned (stripped, fp32). For a 32-token prompt and 96 new tokens (the
``small`` GPT's 128 positions) each file's prefill and decode tokens/s are measured at
1 and 2 threads, beside:

* Keras's own cached generation (``generation.generate`` on TensorFlow, with and
  without XLA);
* the naive loop: the fixed-window fp32 ``.tflite`` recomputing its 128 positions per
  token (``export.WindowGenerator``);
* Google's LiteRT-LM engine running our ``.litertlm`` (``litert_lm.Benchmark``).

Fidelity per variant: greedy tokens identical to the Keras model it came from (fp32:
free-running over the full context; others: teacher-forced along validation text),
bits per byte of the generator (teacher-forced decode) against the fixed-window file of
the same mode, and the file size against that fixed-window file.

    python scripts/benchmark_generation.py --preset=small --train_steps=400
"""

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

PRESET = flags.DEFINE_string("preset", "small", "Reference GPT preset.")
TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Training steps (default: preset's).")
QAT_STEPS = flags.DEFINE_integer("qat_steps", 60, "QAT fine-tune steps.")
PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Prompt length.")
REPEATS = flags.DEFINE_integer(
    "repeats", 9, "Timed rounds (every runner generates once per round; median)."
)
BPB_WINDOWS = flags.DEFINE_integer("bpb_windows", 8, "Validation windows for bits per byte.")
OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")
MODES = {
    "fp32": None,
    "float16": "float16",
    "dynamic_int8": "dynamic_int8",
    "qat_int8": "int8",
    "int4": "int4",
    "pruned50_fp32": None,
}


def _models(config, corpus):
    import keras

    from keras_llmopt import quantization, reference, sparsity

    model = reference.trained_model(
        config.name.replace("gpt_", ""), steps=TRAIN_STEPS.value, corpus=corpus
    )
    logging.info("QAT fine-tune: %d steps", QAT_STEPS.value)
    qat = quantization.quantize_model(model)
    x, y = reference.make_batches(corpus.train, 16, QAT_STEPS.value, seed=1)
    qat.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    qat.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile(
        keras.optimizers.Adam(1e-9), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    pruned.fit(x[:16], y[:16], batch_size=16, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    pruned = sparsity.strip_pruning(pruned)
    return {
        "fp32": model,
        "float16": model,
        "dynamic_int8": model,
        "qat_int8": qat,
        "int4": model,
        "pruned50_fp32": pruned,
    }


def _time(fn, repeats):
    fn()  # warm up (traces, allocations)
    found = []
    for _ in range(repeats):
        found.append(fn())
    return {key: float(np.median([f[key] for f in found])) for key in found[0]}


def _time_generators(rows, folder, prompt, new):
    """Prefill / decode tokens/s per variant and thread count, in interleaved rounds.

    Every round generates once with every (variant, threads) runner in a shuffled order,
    so a slow moment of the machine is spread over all rows; each figure is the median.
    """
    from keras_llmopt import export

    runners = {
        (row["variant"], threads): export.load_generator(
            os.path.join(folder, f"{row['variant']}.tflite"), num_threads=threads
        )
        for row in rows
        for threads in (1, 2)
    }
    found = {key: [] for key in runners}
    order = list(runners)
    rng = np.random.default_rng(0)
    for round_index in range(REPEATS.value + 1):  # round 0 warms up
        rng.shuffle(order)
        for key in order:
            runners[key].generate(prompt, new)
            if round_index:
                found[key].append(dict(runners[key].last_stats))
    logging.info("timed %d rounds of %d runners", REPEATS.value, len(runners))
    for row in rows:
        for threads in (1, 2):
            stats = found[(row["variant"], threads)]
            for phase in ("prefill", "decode"):
                rates = [s[f"{phase}_tokens_per_second"] for s in stats]
                row[f"{phase}_tok_s_{threads}t"] = float(np.median(rates))


def _bpb_from_logits(logits, targets):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(targets)), targets]) / np.log(2))


def main(argv):
    del argv
    from keras_llmopt import export, generation, reference

    config = reference.GPTConfig.preset(PRESET.value)
    context = config.sequence_length
    corpus = reference.load_corpus(context)
    models = _models(config, corpus)
    prompt = corpus.validation[:1, : PROMPT_TOKENS.value].astype("int32")
    new = context - PROMPT_TOKENS.value
    windows = corpus.validation[
        np.linspace(0, len(corpus.validation) - 1, BPB_WINDOWS.value).astype(int)
    ].astype("int32")
    rows = []
    folder = tempfile.mkdtemp(prefix="klo_generation_")
    keras_greedy = generation.generate(models["fp32"], prompt, new)
    for name, mode in MODES.items():
        model = models[name]
        path = os.path.join(folder, f"{name}.tflite")
        fixed = os.path.join(folder, f"{name}_window.tflite")
        logging.info("%s: generator and fixed-window files", name)
        kwargs = {"block_size": 32} if mode == "int4" else {}
        started = time.time()
        report = export.to_tflite_generator(
            model,
            path,
            cache_length=context,
            quantization=mode,
            verification_data=windows[:2],
            **kwargs,
        )
        export_seconds = time.time() - started
        fixed_report = export.to_tflite(model, fixed, quantization=mode, verify=False, **kwargs)
        row = {
            "variant": name,
            "size_bytes": report.size_bytes,
            "size_vs_window_file": report.size_bytes / fixed_report.size_bytes,
            "export_s": export_seconds,
            "greedy_agreement": report.summary["generator"]["greedy_agreement"],
        }
        expected = keras_greedy if name == "fp32" else generation.generate(model, prompt, new)
        runner = export.load_generator(path, num_threads=2)
        greedy = runner.generate(prompt, new)
        row["greedy_identical_free_run"] = float(
            np.mean(greedy[0, PROMPT_TOKENS.value :] == expected[0, PROMPT_TOKENS.value :])
        )
        bpb_gen = [_bpb_from_logits(runner.sequence_logits(w[:-1]), w[1:]) for w in windows]
        window_runner = export.load_runner(fixed, num_threads=2)
        bpb_fixed = [_bpb_from_logits(window_runner(w[None, :-1])[0], w[1:]) for w in windows]
        row["bpb_generator"] = float(np.mean(bpb_gen))
        row["bpb_window_file"] = float(np.mean(bpb_fixed))
        rows.append(row)
        logging.info("%s", row)
    _time_generators(rows, folder, prompt, new)
    baselines = []
    for jit in (False, True):

        def keras_once(jit=jit):
            started = time.perf_counter()
            generation.generate(models["fp32"], prompt, new, jit_compile=jit)
            return {"decode_tokens_per_second": new / (time.perf_counter() - started)}

        timed = _time(keras_once, REPEATS.value)
        baselines.append(
            {
                "baseline": f"keras generation.generate (TF{', XLA' if jit else ''})",
                "decode_tok_s_2t": timed["decode_tokens_per_second"],
            }
        )
    fixed = os.path.join(folder, "fp32_window.tflite")
    naive = {"baseline": f"naive full-window recompute (fp32 .tflite, {context} positions)"}
    for threads in (1, 2):
        window = export.WindowGenerator(fixed, num_threads=threads)

        def naive_once(window=window):
            window.generate(prompt, new)
            return {"decode_tokens_per_second": window.last_stats["decode_tokens_per_second"]}

        naive[f"decode_tok_s_{threads}t"] = _time(naive_once, 1)["decode_tokens_per_second"]
    baselines.append(naive)
    baselines.extend(_litertlm_rows(models, folder, context, windows))
    fp32 = rows[0]
    print(
        "\n| variant | size (B) | size / window file | prefill tok/s 1t | decode tok/s 1t "
        "| prefill tok/s 2t | decode tok/s 2t | decode vs fp32 (1t) | greedy = Keras "
        "| free-run = Keras | bpb gen | bpb window |"
    )
    print("|---" * 12 + "|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['size_bytes']:,} | {r['size_vs_window_file']:.4f} "
            f"| {r['prefill_tok_s_1t']:.0f} | {r['decode_tok_s_1t']:.0f} "
            f"| {r['prefill_tok_s_2t']:.0f} | {r['decode_tok_s_2t']:.0f} "
            f"| {r['decode_tok_s_1t'] / fp32['decode_tok_s_1t']:.2f}x "
            f"| {r['greedy_agreement']:.3f} | {r['greedy_identical_free_run']:.3f} "
            f"| {r['bpb_generator']:.4f} | {r['bpb_window_file']:.4f} |"
        )
    print(
        "\n| baseline | decode tok/s 1t | decode tok/s 2t | fp32 generator 1t / this "
        "| fp32 generator 2t / this |"
    )
    print("|---|---|---|---|---|")
    for b in baselines:
        one, two = b.get("decode_tok_s_1t"), b.get("decode_tok_s_2t")
        print(
            f"| {b['baseline']} | {_f(one)} | {_f(two)} "
            f"| {_ratio(fp32['decode_tok_s_1t'], one)} | {_ratio(fp32['decode_tok_s_2t'], two)} |"
        )
    if OUT.value:
        with open(OUT.value, "w") as handle:
            json.dump({"variants": rows, "baselines": baselines}, handle, indent=2)


def _litertlm_rows(models, folder, context, windows):
    import litert_lm

    from keras_llmopt import export

    found = []
    for name in ("fp32", "qat_int8"):
        path = os.path.join(folder, f"{name}.litertlm")
        mode = MODES[name]
        try:
            export.to_litertlm(
                models[name],
                path,
                cache_length=context,
                quantization=mode,
                verification_data=windows[:2],
            )
            row = {"baseline": f"LiteRT-LM engine, our {name} .litertlm"}
            for threads in (1, 2):
                info = litert_lm.Benchmark(
                    path,
                    litert_lm.Backend.CPU(thread_count=threads),
                    prefill_tokens=32,
                    decode_tokens=96,
                    max_num_tokens=context,
                ).run()
                row[f"decode_tok_s_{threads}t"] = _engine_rate(info, "decode")
                row[f"prefill_tok_s_{threads}t"] = _engine_rate(info, "prefill")
        except Exception as error:  # the engine's message goes into the table
            row = {"baseline": f"LiteRT-LM engine, our {name} .litertlm: {error}"}
        found.append(row)
    return found


def _engine_rate(info, phase):
    value = getattr(info, f"last_{phase}_tokens_per_second", None)
    return None if value is None else float(value)


def _f(value):
    return "-" if value is None else f"{value:.0f}"


def _ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


if __name__ == "__main__":
    app.run(main)
