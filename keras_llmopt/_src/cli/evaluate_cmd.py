"""``keras-llmopt evaluate``: bits per byte of a model or artifact on the validation set."""

import os

import keras

from keras_llmopt._src.cli import common
from keras_llmopt._src.cli import flags as cli_flags
from keras_llmopt._src.reference.evaluation import evaluate

HELP = "Measure validation bits per byte of --model (.keras, .tflite or .onnx)."
FLAG_NAMES = ("model", "sequence_length", "corpus_dir", "eval_windows")


def run(argv):
    del argv
    path = cli_flags.MODEL.value
    if not path:
        raise ValueError("evaluate: pass the model to measure with --model=PATH")
    if not os.path.exists(path):
        raise FileNotFoundError(f"evaluate: no such model file. Received: --model={path}")
    model = keras.saving.load_model(path, compile=False) if path.endswith(".keras") else path
    corpus = common.corpus_for(common.sequence_length_of(model), validation_only=True)
    result = evaluate(model, corpus, num_windows=cli_flags.EVAL_WINDOWS.value)
    common.print_table(
        [{"model": path, **result.to_dict()}], ["model", "bpb", "perplexity", "loss", "num_tokens"]
    )
