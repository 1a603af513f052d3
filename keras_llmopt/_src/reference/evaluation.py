"""Bits per byte and perplexity of a Keras model or an exported artifact.

Every variant (Keras, TFLite, ONNX) is measured the same way: on the same fixed
validation windows, through a function that maps int32 tokens to logits.
"""

import dataclasses
import math
import os

import keras
import numpy as np

DEFAULT_EVAL_WINDOWS = 256


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Validation figures of a language model.

    Attributes:
        loss: Mean next-byte cross-entropy in nats.
        bpb: Bits per byte (``loss / ln 2``; tokens are bytes).
        perplexity: ``exp(loss)``.
        num_tokens: Number of predicted bytes averaged over.

    Example:
        >>> result = evaluate(model, corpus)
        >>> round(result.bpb, 3)
    """

    loss: float
    bpb: float
    perplexity: float
    num_tokens: int

    def to_dict(self):
        """Returns the fields as a dict.

        Example:
            >>> evaluate(model, corpus).to_dict()["bpb"]
        """
        return dataclasses.asdict(self)


def evaluation_windows(corpus, num_windows=DEFAULT_EVAL_WINDOWS):
    """The fixed validation windows every evaluation uses: evenly spaced, deterministic.

    Example:
        >>> evaluation_windows(corpus, 8).shape
        (8, 129)
    """
    windows = corpus.validation
    if num_windows is None or num_windows >= len(windows):
        return np.asarray(windows)
    if num_windows < 1:
        raise ValueError(f"`num_windows` must be >= 1. Received: num_windows={num_windows}")
    index = np.linspace(0, len(windows) - 1, num_windows).round().astype(int)
    return np.asarray(windows[index])


def logits_function(model_or_path, batch_size=32):
    """Returns ``fn(tokens) -> logits`` for a Keras model or an artifact path.

    Keras models run with ``predict_on_batch`` in chunks of ``batch_size``. A path ending
    in ``.tflite`` or ``.onnx`` is run by ``keras_llmopt.export``'s runtime (LiteRT or
    ONNX Runtime); a ``.keras`` path is loaded first.

    Example:
        >>> fn = logits_function("model.tflite")
        >>> fn(np.zeros((1, 128), "int32")).shape
        (1, 128, 256)
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if path.endswith(".keras"):
            model_or_path = keras.saving.load_model(path)
        elif path.endswith((".tflite", ".onnx")):
            from keras_llmopt._src.export.runtime import load_runner

            return load_runner(path)
        else:
            raise ValueError(
                f"evaluate: cannot run this artifact. Received: {path!r}; accepted: a "
                "keras.Model, or a path ending in .keras, .tflite or .onnx"
            )
    if not callable(model_or_path):
        raise TypeError(
            "evaluate: expected a keras.Model, a callable tokens -> logits, or an artifact "
            f"path. Received: {type(model_or_path).__name__}"
        )
    if not isinstance(model_or_path, keras.Model):
        return model_or_path

    model = model_or_path

    def run(tokens):
        outputs = [
            keras.ops.convert_to_numpy(model.predict_on_batch(tokens[i : i + batch_size]))
            for i in range(0, len(tokens), batch_size)
        ]
        return np.concatenate(outputs, axis=0)

    return run


def evaluate(model_or_path, corpus, num_windows=DEFAULT_EVAL_WINDOWS, batch_size=32):
    """Validation loss, bits per byte and perplexity on fixed windows.

    Args:
        model_or_path: A Keras model, a ``tokens -> logits`` callable, or the path of a
            ``.keras``, ``.tflite`` or ``.onnx`` artifact.
        corpus: A ``Corpus`` whose validation windows are used.
        num_windows: How many evenly spaced validation windows (``None``: all).
        batch_size: Windows per forward pass for Keras models.

    Returns:
        An ``EvalResult``.

    Example:
        >>> evaluate(model, load_corpus(128)).bpb
        1.93...
    """
    windows = evaluation_windows(corpus, num_windows).astype(np.int32)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    fn = logits_function(model_or_path, batch_size=batch_size)
    logits = np.asarray(fn(inputs), dtype=np.float64)
    if logits.shape[:2] != targets.shape or logits.ndim != 3:
        raise ValueError(
            f"evaluate: the model returned logits of shape {logits.shape}; expected "
            f"(batch, length, vocab) with (batch, length) = {targets.shape}"
        )
    loss = float(np.mean(_cross_entropy(logits, targets)))
    return EvalResult(
        loss=loss,
        bpb=loss / math.log(2.0),
        perplexity=math.exp(min(loss, 700.0)),
        num_tokens=int(targets.size),
    )


def _cross_entropy(logits, targets):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    picked = np.take_along_axis(shifted, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return log_norm - picked
