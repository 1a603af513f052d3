"""A tf_keras (Keras 2) twin of the reference GPT, for the tfmot anchor rows.

tfmot 0.8 only accepts tf_keras models, so the benchmark rebuilds the reference GPT
layer for layer in tf_keras, copies the trained weights over (checked: same logits),
and lets tfmot do what it can on that twin.
"""

import numpy as np


def _positions(tokens):
    # Module-level (no closure), so tf_keras can deep-copy and serialize the Lambda.
    import tensorflow as tf

    return tf.cumsum(tf.ones_like(tokens), axis=1) - 1


def _gelu_tanh(x):
    import tensorflow as tf

    return tf.nn.gelu(x, approximate=True)


def build_twin(config):
    """The reference GPT's architecture in tf_keras, with the same layer names.

    Args:
        config: The reference ``GPTConfig``.

    Returns:
        A ``tf_keras.Model`` from int32 ``tokens`` ``(batch, length)`` to logits.

    Example:
        >>> twin = build_twin(GPTConfig.preset("tiny"))
        >>> twin.get_layer("block_0_mlp_up").units
        256
    """
    import tf_keras

    layers = tf_keras.layers
    eps = config.layer_norm_epsilon
    tokens = tf_keras.Input((None,), dtype="int32", name="tokens")
    positions = layers.Lambda(_positions, name="positions")(tokens)
    x = layers.Embedding(config.vocab_size, config.d_model, name="token_embedding")(tokens)
    p = layers.Embedding(config.sequence_length, config.d_model, name="position_embedding")(
        positions
    )
    x = layers.Add(name="embedding_sum")([x, p])
    activation = tf_keras.activations.gelu if not config.gelu_approximate else None
    for i in range(config.num_layers):
        h = layers.LayerNormalization(epsilon=eps, name=f"block_{i}_ln1")(x)
        h = layers.MultiHeadAttention(
            config.num_heads, config.head_dim, name=f"block_{i}_attention"
        )(h, h, use_causal_mask=True)
        x = layers.Add(name=f"block_{i}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=eps, name=f"block_{i}_ln2")(x)
        h = layers.Dense(config.mlp_dim, activation=activation, name=f"block_{i}_mlp_up")(h)
        if config.gelu_approximate:
            h = layers.Activation(_gelu_tanh)(h)
        h = layers.Dense(config.d_model, name=f"block_{i}_mlp_down")(h)
        x = layers.Add(name=f"block_{i}_add2")([x, h])
    x = layers.LayerNormalization(epsilon=eps, name="final_ln")(x)
    logits = layers.Dense(config.vocab_size, name="lm_head")(x)
    return tf_keras.Model(tokens, logits, name=f"{config.name}_tf_keras_twin")


def twin_of(model, config, check_tokens=None):
    """A tf_keras twin carrying ``model``'s trained weights, checked to give its logits.

    Args:
        model: A reference GPT (Keras 3).
        config: Its ``GPTConfig``.
        check_tokens: int32 tokens to compare logits on (default: a random row).

    Returns:
        The twin (``tf_keras.Model``).

    Raises:
        ValueError: If a layer's weights do not fit or the logits differ.

    Example:
        >>> twin = twin_of(trained_model("tiny"), GPTConfig.preset("tiny"))
    """
    twin = build_twin(config)
    for layer in twin.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        source = model.get_layer(layer.name).get_weights()
        shapes = [w.shape for w in weights], [w.shape for w in source]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"tf_keras twin: layer {layer.name!r} weight shapes {shapes[0]} do not match "
                f"the Keras 3 model's {shapes[1]}"
            )
        layer.set_weights(source)
    if check_tokens is None:
        rng = np.random.default_rng(0)
        check_tokens = rng.integers(0, config.vocab_size, (1, config.sequence_length))
    check_tokens = np.asarray(check_tokens, dtype=np.int32)
    expected = np.asarray(model.predict_on_batch(check_tokens))
    produced = np.asarray(twin.predict_on_batch(check_tokens))
    error = float(np.max(np.abs(expected - produced)))
    if error > 1e-3 * max(1.0, float(np.max(np.abs(expected)))):
        raise ValueError(f"tf_keras twin: logits differ from the Keras 3 model by {error:.3g}")
    return twin


def tflite_bytes(tf_keras_model, sequence_length, quantization=None):
    """Converts a tf_keras model with a fixed ``(1, sequence_length)`` input to TFLite.

    Example:
        >>> content = tflite_bytes(twin, 64, quantization="dynamic_int8")
    """
    import tensorflow as tf

    spec = tf.TensorSpec((1, sequence_length), tf.int32, name="tokens")
    function = tf.function(lambda tokens: tf_keras_model(tokens, training=False))
    concrete = function.get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf_keras_model)
    if quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization is not None:
        raise ValueError(
            f"tflite_bytes: unknown quantization. Received: {quantization!r}; accepted: None, "
            "'dynamic_int8'"
        )
    return converter.convert()
