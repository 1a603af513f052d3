"""Fixtures for the ensemble tests: "selector" members whose outputs the test chooses.

Member ``i`` of ``M`` is a Dense layer that copies block ``i`` of its input, so an input
built by concatenating ``M`` arrays of logits makes each member output exactly the
logits the test wrote for it. That lets a test craft agreements, disagreements and ties.
"""

import keras
import numpy as np
import pytest


def _selector(index, num_members, num_classes, length=None, softmax=False, name=None):
    width = num_members * num_classes
    shape = (width,) if length is None else (length, width)
    inputs = keras.Input(shape)
    dense = keras.layers.Dense(
        num_classes, activation="softmax" if softmax else None, name=f"select_{index}"
    )
    outputs = dense(inputs)
    kernel = np.zeros((width, num_classes), "float32")
    kernel[index * num_classes : (index + 1) * num_classes] = np.eye(num_classes)
    dense.set_weights([kernel, np.zeros((num_classes,), "float32")])
    return keras.Model(inputs, outputs, name=name or f"member_{index}")


@pytest.fixture
def make_selectors():
    """``make_selectors(M, C, length=None, softmax=False)`` -> list of M member models."""

    def make(num_members, num_classes, length=None, softmax=False):
        if isinstance(softmax, bool):
            softmax = [softmax] * num_members
        return [_selector(i, num_members, num_classes, length, s) for i, s in enumerate(softmax)]

    return make


def pack(member_logits):
    """Concatenates per-member logits ``(M, ..., C)`` into the selectors' input."""
    return np.concatenate(list(np.asarray(member_logits, "float32")), axis=-1)


def logits_with_argmax(argmaxes, num_classes, seed=0):
    """Random logits ``(M, ..., C)`` whose argmax over C is ``argmaxes`` ``(M, ...)``."""
    argmaxes = np.asarray(argmaxes)
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-1.0, 0.0, size=argmaxes.shape + (num_classes,))
    np.put_along_axis(logits, argmaxes[..., None], 2.0, axis=-1)
    return logits.astype("float32")


def softmax(x):
    x = np.asarray(x, "float64")
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def helpers():
    """The module's numpy helpers, for tests (avoids importing conftest by name)."""

    class Helpers:
        pass

    h = Helpers()
    h.pack = pack
    h.logits_with_argmax = logits_with_argmax
    h.softmax = softmax
    return h
