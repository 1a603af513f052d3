"""Constant SELECT_V2 conditions shrink along repeated axes, with identical outputs."""

import numpy as np

from keras_llmopt._src.export import broadcast_constants


def _run(content, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _convert(fn, spec):
    import tensorflow as tf

    f = tf.function(fn, input_signature=[spec])
    return tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert()


def test_the_gpts_causal_mask_is_stored_once_for_all_heads(tmp_path):
    from keras_llmopt import export, reference

    model = reference.build_gpt("tiny")  # 2 heads, 64 positions
    report = export.to_tflite(model, tmp_path / "gpt.tflite")
    assert report.verification.passed
    assert any("SELECT_V2 conditions stored once" in note for note in report.notes)
    content = (tmp_path / "gpt.tflite").read_bytes()
    assert broadcast_constants.shrink_select_conditions(content) == (content, 0)  # done


def test_outputs_are_identical_and_a_varying_axis_is_kept():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    mask = np.broadcast_to(rng.random((1, 1, 6, 5)) > 0.5, (3, 2, 6, 5)).copy()
    mask[1] = ~mask[1]  # axis 0 varies, axis 1 repeats
    content = _convert(lambda x: tf.where(tf.constant(mask), x, -1.0), tf.TensorSpec((3, 2, 6, 5)))
    rewritten, saved = broadcast_constants.shrink_select_conditions(content)
    assert saved == mask.size - mask.size // 2
    x = rng.normal(size=(3, 2, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(rewritten, x), _run(content, x))


def test_an_axis_no_other_input_spans_is_kept():
    import tensorflow as tf

    mask = np.tile([[True, False, True]], (4, 1))  # rows repeat, but give the output its 4
    content = _convert(lambda x: tf.where(tf.constant(mask), x, -1.0), tf.TensorSpec((1, 3)))
    assert broadcast_constants.shrink_select_conditions(content)[1] == 0
