"""``keras-llmopt demo``: the main job, run end to end on the reference GPT."""

import json
import time

from absl import logging

from keras_llmopt._src.cli import common
from keras_llmopt._src.cli import flags as cli_flags
from keras_llmopt._src.reference.cache import atomic_path
from keras_llmopt._src.reference.config import GPTConfig
from keras_llmopt._src.reference.evaluation import evaluate
from keras_llmopt._src.reference.zoo import trained_model, trained_model_path

HELP = "Train (or load the cached) reference GPT, evaluate it and print the results table."
FLAG_NAMES = ("preset", "steps", "seed", "corpus_dir", "eval_windows", "out")


def run(argv):
    del argv
    start = time.time()
    config = GPTConfig.preset(cli_flags.PRESET.value)
    corpus = common.corpus_for(config.sequence_length)
    steps, seed = cli_flags.STEPS.value, cli_flags.SEED.value
    cached = trained_model_path(cli_flags.PRESET.value, steps, seed, corpus).exists()
    logging.info("Stage 1/2: %s the reference model", "loading" if cached else "training")
    model = trained_model(cli_flags.PRESET.value, steps=steps, seed=seed, corpus=corpus)
    logging.info("Stage 2/2: evaluating on %d validation windows", cli_flags.EVAL_WINDOWS.value)
    result = evaluate(model, corpus, num_windows=cli_flags.EVAL_WINDOWS.value)
    row = {
        "variant": "keras_fp32",
        "parameters": model.count_params(),
        "bpb": result.bpb,
        "perplexity": result.perplexity,
        "trained": "cached" if cached else "now",
    }
    print()
    common.print_table([row], list(row))
    elapsed = time.time() - start
    print(f"\ndemo ({config.name}) finished in {elapsed:.0f} s")
    if cli_flags.OUT.value:
        with atomic_path(cli_flags.OUT.value) as tmp:
            with open(tmp, "w") as f:
                json.dump(
                    {"rows": [row], "wall_time_s": elapsed, "preset": config.name}, f, indent=2
                )
