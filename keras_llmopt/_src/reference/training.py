"""Training helper for the reference GPT: AdamW, warmup + cosine, clipping, progbar."""

import keras
import numpy as np


def make_batches(windows, batch_size, steps, seed=0):
    """Draws ``steps * batch_size`` windows in a fixed random order.

    Args:
        windows: uint8 array ``(num_windows, T + 1)`` (e.g. ``corpus.train``).
        batch_size: Rows per training step.
        steps: Number of steps.
        seed: Seed of the draw; the same seed gives the same rows in the same order.

    Returns:
        ``(x, y)`` int32 arrays of shape ``(steps * batch_size, T)``: inputs and the
        next-byte targets.

    Example:
        >>> x, y = make_batches(corpus.train, batch_size=16, steps=10)
        >>> x.shape
        (160, 128)
    """
    if batch_size < 1 or steps < 1:
        raise ValueError(
            f"make_batches: `batch_size` and `steps` must be >= 1. "
            f"Received: batch_size={batch_size}, steps={steps}"
        )
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(windows), size=steps * batch_size)
    chosen = np.asarray(windows)[rows].astype(np.int32)
    return chosen[:, :-1], chosen[:, 1:]


def lm_loss():
    """Next-token cross-entropy on logits (nats per token).

    Example:
        >>> model.compile(optimizer="adamw", loss=lm_loss())
    """
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_optimizer(steps, learning_rate=2e-3, warmup_steps=None, weight_decay=0.1, clipnorm=1.0):
    """AdamW with linear warmup then cosine decay to 10% and global-norm clipping.

    Example:
        >>> model.compile(optimizer=make_optimizer(1000), loss=lm_loss())
    """
    if warmup_steps is None:
        warmup_steps = max(1, min(100, steps // 10))
    decay_steps = max(1, steps - warmup_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=decay_steps,
        alpha=0.1,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )
    return keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        beta_2=0.99,
        global_clipnorm=clipnorm,
    )


def train(
    model,
    corpus,
    steps,
    batch_size=16,
    learning_rate=2e-3,
    warmup_steps=None,
    seed=0,
    callbacks=None,
    verbose="auto",
    compile=True,
):
    """Trains a language model on random corpus windows with ``model.fit``.

    Args:
        model: A Keras model mapping ``(batch, T)`` int32 tokens to logits.
        corpus: A ``Corpus`` (its ``train`` windows are used).
        steps: Number of optimizer steps.
        batch_size: Windows per step.
        learning_rate: Peak learning rate after warmup.
        warmup_steps: Linear warmup steps (default: 10% of steps, at most 100).
        seed: Seed of the data order.
        callbacks: Extra Keras callbacks (e.g. ``UpdatePruningStep()``).
        verbose: Passed to ``fit`` (a progbar by default).
        compile: If False, keep the model's own compiled optimizer and loss.

    Returns:
        The Keras ``History``.

    Example:
        >>> model = build_gpt("tiny")
        >>> history = train(model, load_corpus(64), steps=100)
    """
    if compile:
        model.compile(optimizer=make_optimizer(steps, learning_rate, warmup_steps), loss=lm_loss())
    x, y = make_batches(corpus.train, batch_size, steps, seed=seed)
    return model.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=False, callbacks=callbacks, verbose=verbose
    )
