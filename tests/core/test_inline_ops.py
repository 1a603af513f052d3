"""Inline keras.ops products: recorded while probing, rewritten in order, per thread."""

import threading

import keras
import numpy as np
import pytest

from keras_llmopt._src.core import inline_ops

pytestmark = pytest.mark.backend_agnostic


def _x(*shape):
    return keras.ops.convert_to_tensor(np.ones(shape, "float32"))


def test_probing_records_contractions_with_operand_kinds_and_skips_outer_products():
    weight = keras.Variable(np.ones((3, 2), "float32"))
    with inline_ops.probing(lambda: "layer") as seen:
        keras.ops.einsum("btd,bsd->bts", _x(1, 4, 3), _x(1, 5, 3))
        keras.ops.matmul(_x(4, 3), weight)
        keras.ops.einsum("i,j->ij", _x(4), _x(5))  # rotary table: no contraction
        keras.ops.einsum("ab,cd->abcd", _x(2, 2), _x(2, 2))  # outer product
    ops = [op for op, _, _ in seen["layer"]]
    assert [(op.op, op.equation) for op in ops] == [("einsum", "btd,bsd->bts"), ("matmul", "")]
    assert ops[0].operands == ("activation", "activation")
    assert ops[1].operands == ("activation", "weight")
    assert inline_ops.InlineOp.from_config(ops[0].to_config()) == ops[0]


def test_rewriting_sees_products_in_order_and_none_shields_an_inner_block():
    seen = []

    def handler(op, operands, compute):
        seen.append(op.equation or op.op)
        return compute(*operands) * 0.0

    with inline_ops.rewriting(handler):
        zero = keras.ops.matmul(_x(2, 3), _x(3, 2))
        with inline_ops.rewriting(None):
            plain = keras.ops.matmul(_x(2, 3), _x(3, 2))
    outside = keras.ops.matmul(_x(2, 3), _x(3, 2))
    assert seen == ["matmul"]
    assert float(keras.ops.max(zero)) == 0.0
    assert float(keras.ops.min(plain)) == 3.0 and float(keras.ops.min(outside)) == 3.0


def test_a_handler_on_one_thread_does_not_touch_another_thread():
    other = {}
    started, release = threading.Event(), threading.Event()

    def worker():
        started.wait(5)
        other["y"] = float(keras.ops.min(keras.ops.matmul(_x(1, 2), _x(2, 1))))
        release.set()

    thread = threading.Thread(target=worker)
    thread.start()
    with inline_ops.rewriting(lambda op, operands, compute: compute(*operands) * 0.0):
        started.set()
        release.wait(5)
    thread.join(5)
    assert other["y"] == 2.0
