"""Trained reference models, trained once and then loaded from the cache."""

import hashlib
import json
import time

import keras
from absl import logging

from keras_llmopt._src.reference import config as config_lib
from keras_llmopt._src.reference.cache import atomic_path, cache_dir
from keras_llmopt._src.reference.corpus import load_corpus
from keras_llmopt._src.reference.model import build_gpt
from keras_llmopt._src.reference.training import train

BATCH_SIZE = 16


# Bump when build_gpt or the training helper changes what a recipe produces, so stale
# cached models are retrained (2: one initializer instance per layer).
MODEL_CODE_VERSION = 2


def trained_model_path(preset, steps=None, seed=0, corpus=None):
    """Cache path of a trained reference model (it may not exist yet).

    Example:
        >>> trained_model_path("small").name
        'gpt_small-....keras'
    """
    config = config_lib.GPTConfig.preset(preset)
    steps, learning_rate = _budget(preset, steps)
    corpus = corpus or load_corpus(config.sequence_length, validation_only=True)
    recipe = {
        "config": config.to_dict(),
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "learning_rate": learning_rate,
        "seed": seed,
        "corpus": [corpus.source, list(corpus.num_files)],
        "keras": keras.__version__,
        "model_code": MODEL_CODE_VERSION,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("models") / f"{config.name}-{key}.keras"


def trained_model(preset="small", steps=None, seed=0, corpus=None, verbose="auto"):
    """Returns the reference GPT trained for its default budget, cached on disk.

    The first call trains (``steps`` of batch 16 on the stdlib corpus, with a progress
    bar) and saves the model atomically; later calls load it in seconds. The cache key
    covers the config, the budget, the seed, the corpus and the Keras version.

    Args:
        preset: ``"tiny"``, ``"small"`` or a ``GPTConfig``.
        steps: Training steps (default: the preset's budget, 300 tiny / 1000 small).
        seed: Seed of weights and data order.
        corpus: A ``Corpus`` to train on (default: the stdlib corpus).
        verbose: Keras ``fit`` verbosity while training.

    Returns:
        A compiled-free trained ``keras.Model`` (load-and-go for inference or further
        optimization).

    Example:
        >>> model = trained_model("small")  # ~8 min the first time on 2 cores
        >>> evaluate(model, load_corpus(128)).bpb
    """
    config = config_lib.GPTConfig.preset(preset)
    steps, learning_rate = _budget(preset, steps)
    corpus = corpus or load_corpus(config.sequence_length)
    path = trained_model_path(preset, steps, seed, corpus)
    if path.exists():
        logging.info("Loading cached trained model %s", path)
        return keras.saving.load_model(path, compile=False)
    logging.info("Training %s for %d steps (cached at %s afterwards)", config.name, steps, path)
    model = build_gpt(config, seed=seed)
    start = time.time()
    train(model, corpus, steps=steps, learning_rate=learning_rate, seed=seed, verbose=verbose)
    logging.info("Trained %s in %.0f s", config.name, time.time() - start)
    with atomic_path(path) as tmp:
        model.save(tmp)
    return keras.saving.load_model(path, compile=False)


def _budget(preset, steps):
    name = preset if isinstance(preset, str) else None
    if steps is None:
        steps = config_lib.DEFAULT_TRAIN_STEPS.get(name, 1000)
    return int(steps), config_lib.DEFAULT_LEARNING_RATE.get(name, 2e-3)
