"""Structural pruning of the reference GPT (keras_llmopt.llm) beside its dense controls, in one run.

    python scripts/benchmark_structural.py --preset=small --out=bench_structural
    python scripts/benchmark_structural.py --preset=tiny --finetune_steps=5 --out=/tmp/s

Thin wrapper of ``keras-llmopt benchmark`` with the structural rows
(``keras_llmopt/_src/benchmark/structural_variants.py``): 25 / 30 / 50 % of the block
parameters removed by attention heads + MLP channels (activation importance on 128
calibration windows; 30 % also by weight magnitude) and one of four blocks removed
(block influence), each one-shot and distilled from the dense model for
``--finetune_steps`` steps (300 on ``small``), every one a verified fp32 ``.tflite``;
the matched control ``dense_finetune300`` (the same training, no teacher); and the
QAT full-integer int8 files of the distilled 30 % model and of the control. The
untouched dense fp32 model (``keras_fp32``, ``tflite_fp32``) is always measured, and
the benchmark adds ``dense_finetuned_fp32``, its own fine-tuned control.

After the table, the two QAT models' int8 generator files (prefill / decode
signatures, written by their rows) are timed as ``scripts/benchmark_generation.py``
times generators: prefill and decode tokens/s at 1 and 2 threads, interleaved rounds,
medians; the table is printed and added to ``report.md`` and ``benchmark.json``
(``generation``). A later ``--benchmark_variants`` replaces the row list; other flags
are the benchmark's. Distilled and QAT models are cached (``$KERAS_LLMOPT_CACHE``), so
a second run only exports and measures.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402

from keras_llmopt._src.benchmark import generator_timing, structural_variants  # noqa: E402
from keras_llmopt._src.cli import benchmark_cmd  # noqa: E402
from keras_llmopt._src.cli import flags as cli_flags  # noqa: E402

ROWS = tuple(structural_variants.VARIANTS)
DEFAULT_OUT = "keras_llmopt_structural"

PROMPT_TOKENS = flags.DEFINE_integer(
    "prompt_tokens", 32, "Generator timing: prompt length (the rest of the cache is decoded)."
)
GENERATOR_REPEATS = flags.DEFINE_integer(
    "generator_repeats", 9, "Generator timing: timed rounds (median).", lower_bound=1
)


def _time_generators(out, started):
    """Times the generator files this run wrote; returns the rows (empty: none written)."""
    from keras_llmopt._src.benchmark.report import write_json
    from keras_llmopt._src.cli import common
    from keras_llmopt._src.export.generator_runner import load_generator

    with open(os.path.join(out, "benchmark.json")) as handle:
        data = json.load(handle)
    ok = {row["variant"] for row in data["rows"] if not row.get("error")}
    paths = {}
    for variant in structural_variants.GENERATOR_ROWS:
        path = generator_timing.generator_path(os.path.join(out, "artifacts"), variant)
        if variant in ok and os.path.exists(path) and os.path.getmtime(path) >= started:
            paths[variant] = path
    if not paths:
        logging.info("no generator files from this run (rows not run, failed, or removed)")
        return []
    cache_length = load_generator(next(iter(paths.values()))).cache_length
    prompt_tokens = min(PROMPT_TOKENS.value, cache_length - 1)
    corpus = common.corpus_for(cache_length, validation_only=True)
    prompt = corpus.validation[:1, :prompt_tokens].astype("int32")
    new_tokens = cache_length - prompt_tokens
    rows = generator_timing.time_generators(
        paths, prompt, new_tokens, repeats=GENERATOR_REPEATS.value
    )
    table = generator_timing.generation_markdown(rows)
    heading = (
        f"## int8 generators: {prompt_tokens}-token prompt, {new_tokens} new tokens "
        f"(LiteRT, medians of {GENERATOR_REPEATS.value} interleaved rounds)"
    )
    print(f"\n{heading}\n\n{table}")
    data["generation"] = {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "repeats": GENERATOR_REPEATS.value,
        "rows": rows,
    }
    write_json(data, os.path.join(out, "benchmark.json"))
    with open(os.path.join(out, "report.md"), "a") as handle:
        handle.write(f"\n{heading}\n\n{table}\n")
    return rows


def main(argv):
    from keras_llmopt._src.core import registry

    logging.set_verbosity(logging.INFO)
    started = time.time()
    try:
        registry.load_plugins(cli_flags.PLUGINS.value or [])
        benchmark_cmd.run(argv)
        _time_generators(cli_flags.OUT.value, started)
    except (ValueError, FileNotFoundError) as error:
        logging.error("%s", error)
        print(f"benchmark_structural: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    flags.FLAGS.set_default("benchmark_variants", list(ROWS))
    flags.FLAGS.set_default("out", DEFAULT_OUT)
    app.run(main)
