"""Preparing quantized attention: symmetric key/value ranges and the folded query scale.

Run by ``quantize_apply`` over the layers it is about to quantize, before any state is
installed: XNNPACK's int8 BATCH_MATMUL needs zero-point-0 right-hand operands, and the
16x8 converter cannot quantize the ``1/sqrt(key_dim)`` MUL, so the scale goes into the
query projection's kernel.
"""

import keras

from keras_llmopt._src.core import keras_compat
from keras_llmopt._src.quantization.configs import (
    AttentionConfig,
    WeightedLayerConfig,
)


def attention_value_operands(layers):
    """Ids of the key and value projections of the attention layers among ``layers``.

    Their outputs are the right-hand operands of the attention's two BATCH_MATMULs.
    LiteRT's XNNPACK delegate runs an int8 BATCH_MATMUL only when that operand has
    zero point 0; otherwise it falls back to a builtin kernel about 20x slower
    (measured: 0.85 ms against 0.05 ms for a 4 x 128 x 64 x 128 product), which made
    a full-integer GPT slower than fp32. Any layer holding ``_key_dense`` and
    ``_value_dense`` (Keras MultiHeadAttention, KerasHub attention) counts.
    """
    found = set()
    for layer in layers:
        projections = keras_compat.attention_internals.projections(layer)
        for name in ("key", "value"):
            if name in projections:
                found.add(id(projections[name]))
    return found


def fold_query_scales(layer_configs):
    """Folds each quantized attention's ``1/sqrt(key_dim)`` into its query projection.

    Keras' attention multiplies the projected query by ``1/sqrt(key_dim)``. With
    fake quantization on both sides that MUL stays in the exported graph, and the
    converter's 16x8 mode cannot quantize it (its constant operand becomes int8
    against an int16 input: "'tfl.mul' op failed to verify that binary op operands
    have same element type"). Scaling the projection's kernel and bias instead
    computes the same query in float, removes one op per layer and lets the
    projection's (symmetric) output range be the scaled query's.

    Applies to ``keras.layers.MultiHeadAttention`` layers (KerasHub's cached
    attention included) with an ``AttentionConfig`` whose query projection has a
    default ``WeightedLayerConfig`` computed through ``dense_view`` with a linear
    activation. Both configs are updated in place.

    Args:
        layer_configs: ``[(layer, config, is_default)]`` of the layers about to be
            quantized.

    Returns:
        The number of attention layers folded.

    Example:
        >>> from keras_llmopt._src.quantization import schemes
        >>> from keras_llmopt._src.quantization.configs import default_config
        >>> scheme = schemes.get_scheme("default_8bit")
        >>> mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)
        >>> _ = mha(keras.ops.ones((1, 4, 8)), keras.ops.ones((1, 4, 8)))
        >>> pairs = [(layer, default_config(layer, scheme), True)
        ...          for layer in (mha, keras_compat.attention_internals.projections(mha)["query"])]
        >>> fold_query_scales(pairs), pairs[1][1].output_scale
        (1, 0.25)
    """
    by_id = {id(layer): (config, is_default) for layer, config, is_default in layer_configs}
    folded = 0
    for layer, config, _ in layer_configs:
        if not (
            isinstance(layer, keras.layers.MultiHeadAttention)
            and isinstance(config, AttentionConfig)
            and config.scheme.activation_bits
            and not config.query_scaled
        ):
            continue
        query = keras_compat.attention_internals.projections(layer).get("query")
        query_config, is_default = by_id.get(id(query), (None, False))
        if not (
            is_default
            and isinstance(query_config, WeightedLayerConfig)
            and query_config.dense_view is not None
            and query_config.output_scale is None
            and getattr(query, "activation", None) in (None, keras.activations.linear)
        ):
            continue
        query_config.output_scale = float(
            keras_compat.attention_internals.inverse_sqrt_key_dim(layer)
        )
        query_config.symmetric_output = True
        config.query_scaled = True
        folded += 1
    return folded
