"""The frozen-graph rewrites applied before integer conversion keep the outputs."""

import numpy as np
import tensorflow as tf

from keras_llmopt._src.export.graph_rewrite import rewrite_for_integer
from keras_llmopt._src.export.signature import frozen_function


def _ops(function):
    return {n.op: n for n in function.graph.as_graph_def().node}


def test_int32_comparisons_of_inputs_become_float_and_keep_their_results():
    def mask(padding, causal):
        return tf.cast(tf.greater(tf.minimum(padding, causal), 0), tf.float32)

    f = tf.function(
        mask,
        input_signature=[tf.TensorSpec((1, 4), tf.int32), tf.TensorSpec((1, 4), tf.int32)],
    )
    rewritten, count = rewrite_for_integer(frozen_function(f))
    assert count == 1
    greater = _ops(rewritten)["Greater"]
    assert greater.attr["T"].type == tf.float32.as_datatype_enum
    padding = tf.constant([[1, 1, 0, 3]])
    causal = tf.constant([[0, 1, 1, 1]])
    (out,) = tf.nest.flatten(rewritten(padding, causal))
    np.testing.assert_array_equal(out.numpy(), mask(padding, causal).numpy())


def test_comparisons_of_constants_are_left_alone():
    f = tf.function(
        lambda x: tf.where(tf.less(tf.range(4), 2), x, -x),
        input_signature=[tf.TensorSpec((4,), tf.float32)],
    )
    rewritten, count = rewrite_for_integer(frozen_function(f))
    assert count == 0
    assert _ops(rewritten)["Less"].attr["T"].type == tf.int32.as_datatype_enum
