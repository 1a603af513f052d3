"""``keras-llmopt train``: train the reference GPT and save it."""

import time

import keras
from absl import logging

from keras_llmopt._src.cli import common
from keras_llmopt._src.cli import flags as cli_flags
from keras_llmopt._src.reference.cache import atomic_path
from keras_llmopt._src.reference.config import GPTConfig
from keras_llmopt._src.reference.evaluation import evaluate
from keras_llmopt._src.reference.zoo import trained_model

HELP = "Train the reference GPT (--preset, --steps) and save it (--out, default: the cache)."
FLAG_NAMES = ("preset", "steps", "seed", "corpus_dir", "eval_windows", "out")


def run(argv):
    del argv
    config = GPTConfig.preset(cli_flags.PRESET.value)
    corpus = common.corpus_for(config.sequence_length)
    start = time.time()
    model = trained_model(
        cli_flags.PRESET.value,
        steps=cli_flags.STEPS.value,
        seed=cli_flags.SEED.value,
        corpus=corpus,
    )
    if cli_flags.OUT.value:
        with atomic_path(cli_flags.OUT.value) as tmp:
            model.save(tmp)
        logging.info("Saved %s", cli_flags.OUT.value)
    result = evaluate(model, corpus, num_windows=cli_flags.EVAL_WINDOWS.value)
    print(
        f"{config.name}: {model.count_params():,} parameters, validation bpb {result.bpb:.4f}, "
        f"perplexity {result.perplexity:.3f}, {time.time() - start:.0f} s"
    )
    if cli_flags.OUT.value:
        print(f"saved to {cli_flags.OUT.value}")
    keras.backend.clear_session()
