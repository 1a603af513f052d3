"""Gradients of the next-token loss over calibration batches, on the running backend.

Used by first-order (Taylor) importance. Keras 3 has no backend-neutral gradient
call, so TensorFlow uses ``GradientTape``, JAX ``jax.grad`` over
``model.stateless_call``, and torch ``backward``.
"""

import keras
import numpy as np

from keras_llmopt._src.core import model_inputs


def _tokens(model, batch):
    if not isinstance(batch, dict):
        return batch
    name = model_inputs.describe_inputs(model, keep_dynamic=True).token_input
    if name is None or name not in batch:
        raise ValueError(
            f"Taylor importance needs the token ids among the model's inputs to form "
            f"next-token labels. Received: a batch with keys {sorted(batch)}"
        )
    return batch[name]


def _loss(logits, tokens):
    labels = keras.ops.cast(tokens[:, 1:], "int32")
    losses = keras.losses.sparse_categorical_crossentropy(labels, logits[:, :-1], from_logits=True)
    return keras.ops.mean(losses)


def _tensorflow(model, batch, tokens, variables):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = _loss(model(batch, training=False), tokens)
    return tape.gradient(loss, [v.value for v in variables])


def _jax(model, batch, tokens, variables):
    import jax

    trainable = model.trainable_variables
    index = {id(v): i for i, v in enumerate(trainable)}
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_fn(values):
        logits, _ = model.stateless_call(values, non_trainable, batch, training=False)
        return _loss(logits, tokens)

    grads = jax.grad(loss_fn)([v.value for v in trainable])
    return [grads[index[id(v)]] for v in variables]


def _torch(model, batch, tokens, variables):
    model.zero_grad()
    loss = _loss(model(batch, training=False), tokens)
    loss.backward()
    return [v.value.grad for v in variables]


def loss_gradients(model, batches, variables):
    """Sum over ``batches`` of the gradients of the mean next-token loss w.r.t. ``variables``.

    Args:
        model: A model mapping token ids (or a dict with them) to logits.
        batches: Calibration batches.
        variables: Trainable variables of ``model``.

    Returns:
        One float64 numpy array per variable.

    Example:
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny")
        >>> [g.shape for g in loss_gradients(model, [np.zeros((2, 8), "int32")],
        ...                                 [model.get_layer("lm_head").kernel])]
        [(64, 256)]
    """
    step = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}.get(keras.backend.backend())
    if step is None:
        raise ValueError(
            f"Taylor importance needs gradients, not available on the "
            f"{keras.backend.backend()!r} backend. Accepted: tensorflow, jax, torch"
        )
    total = [np.zeros(tuple(v.shape)) for v in variables]
    for batch in batches:
        tokens = keras.ops.convert_to_tensor(_tokens(model, batch))
        for i, g in enumerate(step(model, batch, tokens, variables)):
            if g is not None:
                total[i] += keras.ops.convert_to_numpy(g).astype("float64")
    return total
