"""The reference byte-level GPT and stdlib corpus that demos, benchmarks and tests use.

Example:
    >>> from keras_llmopt import reference
    >>> corpus = reference.load_corpus(64)
    >>> model = reference.build_gpt("tiny")
    >>> reference.train(model, corpus, steps=100)
    >>> reference.evaluate(model, corpus).bpb
"""

from keras_llmopt._src.reference.config import PRESETS, GPTConfig
from keras_llmopt._src.reference.corpus import Corpus, default_corpus_dir, load_corpus
from keras_llmopt._src.reference.evaluation import (
    EvalResult,
    evaluate,
    evaluation_windows,
    logits_function,
)
from keras_llmopt._src.reference.model import INPUT_NAME, build_gpt
from keras_llmopt._src.reference.training import lm_loss, make_batches, make_optimizer, train
from keras_llmopt._src.reference.zoo import trained_model, trained_model_path

__all__ = [
    "Corpus",
    "EvalResult",
    "GPTConfig",
    "INPUT_NAME",
    "PRESETS",
    "build_gpt",
    "default_corpus_dir",
    "evaluate",
    "evaluation_windows",
    "lm_loss",
    "load_corpus",
    "logits_function",
    "make_batches",
    "make_optimizer",
    "train",
    "trained_model",
    "trained_model_path",
]
