"""Recovery after structural pruning: distill from the original model, or fine-tune.

``recover(student, teacher, windows, steps)`` trains the pruned ``student`` in place
for ``steps`` batches of next-token windows: with a teacher, on the usual soft-target
loss (``ensemble.Distiller``, the Minitron recipe); with ``teacher=None``, on plain
cross-entropy (the matched-control fine-tune). Keras's progress bar shows progress;
an interrupted run leaves the student as trained so far, and nothing on disk.
"""

import keras
import numpy as np

from keras_llmopt._src.core import model_inputs
from keras_llmopt._src.ensemble import distill


def _windows(data, where):
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        x = {k: np.asarray(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)
        return x, np.asarray(y)
    windows = np.asarray(data)
    if windows.ndim != 2 or windows.shape[1] < 2 or not np.issubdtype(windows.dtype, np.integer):
        raise ValueError(
            f"{where}: `data` must be integer token windows of shape (N, T + 1) (inputs and "
            f"next-token labels) or an (x, y) pair. Received: shape {windows.shape}, dtype "
            f"{windows.dtype}"
        )
    return windows[:, :-1].astype("int32"), windows[:, 1:].astype("int32")


def _model_inputs(model, tokens):
    described = model_inputs.describe_inputs(model, keep_dynamic=True)
    if not described.is_dict:
        return tokens
    values = []
    for spec in described.specs:
        values.append(tokens if spec.is_tokens else np.ones(tokens.shape, dtype=spec.dtype))
    return described.pack(values)


class _FineTune(keras.Model):
    """Trains ``student`` on next-token cross-entropy without touching its own compile.

    A wrapper, so a KerasHub task's ``fit`` (which would run its preprocessor on token
    ids) and ``compile`` (which would reset its sampler) are not used.
    """

    def __init__(self, student):
        super().__init__(name="fine_tune")
        self.student = student

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)


def _repeat(x, y, rows, seed):
    order = np.resize(np.random.default_rng(seed).permutation(len(y)), rows)
    if isinstance(x, dict):
        return {k: v[order] for k, v in x.items()}, y[order]
    return x[order], y[order]


def recover(
    student,
    teacher,
    data,
    steps=300,
    *,
    batch_size=16,
    learning_rate=3e-4,
    temperature=2.0,
    alpha=0.1,
    seed=0,
    verbose="auto",
):
    """Trains a pruned ``student`` to recover, by distillation from ``teacher`` (or fine-tuning).

    Args:
        student: The pruned model (trained in place and returned).
        teacher: The original model (frozen), or ``None`` for a plain fine-tune.
        data: Token windows ``(N, T + 1)`` (inputs and next-token labels), or an
            ``(x, y)`` pair; rows are cycled, shuffled, to fill ``steps`` batches.
        steps: Optimizer steps.
        batch_size: Windows per step.
        learning_rate: AdamW learning rate.
        temperature: Distillation temperature.
        alpha: Weight of the hard-label loss (distillation only).
        seed: Order of the windows.
        verbose: Passed to ``fit`` (the progress bar).

    Returns:
        ``student``, with the ``keras.callbacks.History`` as ``recovery_history``.

    Example:
        >>> from keras_llmopt import reference
        >>> teacher = reference.build_gpt("tiny")
        >>> windows = np.random.default_rng(0).integers(0, 256, (8, 17)).astype("int32")
        >>> student = recover(reference.build_gpt("tiny"), teacher, windows, steps=2,
        ...                   batch_size=4, verbose=0)
        >>> len(student.recovery_history.history["loss"])
        1
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"recover: `steps` must be an integer >= 1. Received: steps={steps!r}")
    x, y = _windows(data, "recover")
    x, y = _repeat(x, y, steps * batch_size, seed)
    inputs = x if isinstance(x, dict) else _model_inputs(student, x)
    optimizer = keras.optimizers.AdamW(learning_rate)
    if teacher is None:
        trainer = _FineTune(student)
        trainer.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    else:
        trainer = distill.Distiller(teacher, student, temperature=temperature, alpha=alpha)
        trainer.compile(optimizer=optimizer)
    history = trainer.fit(
        inputs, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=verbose
    )
    object.__setattr__(student, "recovery_history", history)
    return student
