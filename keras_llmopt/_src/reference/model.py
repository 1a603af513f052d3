"""The reference GPT: a plain Keras 3 functional model (no custom layer classes).

Because every layer is a built-in Keras layer, a saved reference model (and anything
stripped back to plain layers) loads with ``keras.saving.load_model`` alone.
"""

import keras
from keras import layers, ops

from keras_llmopt._src.reference.config import GPTConfig

INPUT_NAME = "tokens"


def build_gpt(config="tiny", seed=None):
    """Builds the reference decoder-only GPT as a functional Keras model.

    Token and learned position embeddings, pre-LayerNorm blocks with causal
    ``keras.layers.MultiHeadAttention`` and a GELU MLP, a final LayerNorm and a Dense
    head to byte logits. Positions come from ``keras.ops.cumsum`` over the input, so
    the model takes any length up to ``config.sequence_length`` and saves without a
    custom layer.

    Args:
        config: A ``GPTConfig`` or a preset name (``"tiny"``, ``"small"``).
        seed: Optional seed for the weight initializers (same seed, same weights).

    Returns:
        A ``keras.Model`` mapping int32 ``tokens`` of shape ``(batch, length)`` to float
        logits of shape ``(batch, length, vocab_size)``.

    Example:
        >>> model = build_gpt("tiny")
        >>> model(np.zeros((1, 8), "int32")).shape
        TensorShape([1, 8, 256])
    """
    config = GPTConfig.preset(config)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    # A fresh initializer per layer: Keras 3 reuses an unseeded initializer instance's seed,
    # so sharing one would give every same-shaped kernel identical starting values.
    def init():
        return keras.initializers.RandomNormal(stddev=0.02)

    # Residual projections are scaled down with depth (GPT-2) so deep stacks start stable.
    def residual_init():
        return keras.initializers.RandomNormal(stddev=0.02 / (2 * config.num_layers) ** 0.5)

    eps = config.layer_norm_epsilon

    tokens = keras.Input(shape=(None,), dtype="int32", name=INPUT_NAME)
    positions = ops.cumsum(ops.ones_like(tokens), axis=1) - 1
    token_embedding = layers.Embedding(
        config.vocab_size, config.d_model, embeddings_initializer=init(), name="token_embedding"
    )(tokens)
    position_embedding = layers.Embedding(
        config.sequence_length,
        config.d_model,
        embeddings_initializer=init(),
        name="position_embedding",
    )(positions)
    x = layers.Add(name="embedding_sum")([token_embedding, position_embedding])
    if config.dropout:
        x = layers.Dropout(config.dropout, name="embedding_dropout")(x)

    # Exact GELU lives in the Dense; the tanh form is a keras.ops node, so neither
    # needs a registered function to load.
    activation = None if config.gelu_approximate else "gelu"
    for i in range(config.num_layers):
        h = layers.LayerNormalization(epsilon=eps, name=f"block_{i}_ln1")(x)
        h = layers.MultiHeadAttention(
            num_heads=config.num_heads,
            key_dim=config.head_dim,
            dropout=config.dropout,
            kernel_initializer=init(),
            name=f"block_{i}_attention",
        )(h, h, use_causal_mask=True)
        x = layers.Add(name=f"block_{i}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=eps, name=f"block_{i}_ln2")(x)
        h = layers.Dense(
            config.mlp_dim,
            activation=activation,
            kernel_initializer=init(),
            name=f"block_{i}_mlp_up",
        )(h)
        if config.gelu_approximate:
            h = ops.gelu(h, approximate=True)
        h = layers.Dense(
            config.d_model, kernel_initializer=residual_init(), name=f"block_{i}_mlp_down"
        )(h)
        if config.dropout:
            h = layers.Dropout(config.dropout, name=f"block_{i}_dropout")(h)
        x = layers.Add(name=f"block_{i}_add2")([x, h])
    x = layers.LayerNormalization(epsilon=eps, name="final_ln")(x)
    logits = layers.Dense(config.vocab_size, kernel_initializer=init(), name="lm_head")(x)
    return keras.Model(tokens, logits, name=config.name)
