"""Quantized attention core for ``keras.layers.MultiHeadAttention`` (and subclasses).

The layer's ``_compute_attention`` is replaced (on the instance) by an explicit
attention with fake quantization at each tensor TFLite's integer kernels see:
scaled query (MUL output, unless ``1/sqrt(key_dim)`` is folded into the query
projection: ``attention_prep.fold_query_scales``), scores (BATCH_MATMUL output),
softmax input (SELECT output), probabilities (SOFTMAX output, fixed ``[0, 1)``) and the attention
output (second BATCH_MATMUL).

Attention mask: Keras fills masked scores with ``-1e9`` (or ``finfo.min``); a
range observed over that would span ~1e9 and every int8 score would round to the
same code. Here the scores' observer sees only the unmasked positions (masked
entries are replaced by 0, which every range contains), its minimum is lowered
by ``ATTENTION_MASK_MARGIN`` (16), and the masked positions are filled with that
lowered minimum, which is the range's lowest code. A masked position then sits at
least 16 below every unmasked score of its row (exp(-16) ~ 1e-7: numerically no
attention), and the softmax input's int8 step stays ``(max - min + 16) / 255``.
The same (finite) fill is what the exported graph contains.
"""

from keras import ops

from keras_llmopt._src.core.keras_compat import attention_internals as internals
from keras_llmopt._src.quantization.layer_quantizers import fake_quant_range


def _expand_mask(layer, scores, mask):
    mask_expansion_axis = -len(internals.attention_axes(layer)) * 2 - 1
    for _ in range(len(scores.shape) - len(mask.shape)):
        mask = ops.expand_dims(mask, axis=mask_expansion_axis)
    return ops.cast(mask, "bool")


def make_compute_attention(layer, quantizers, is_training):
    """Returns a ``_compute_attention`` replacement for ``layer`` using ``quantizers``.

    Args:
        layer: The attention layer.
        quantizers: ``{"query", "scores", "probs", "output"}`` from
            ``AttentionConfig.get_attention_quantizers``; without ``"query"`` the
            query arrives already scaled and quantized.
        is_training: ``fn(training) -> bool``.
    """

    def compute_attention(
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
        **kwargs,
    ):
        train = is_training(training)
        if use_causal_mask:
            causal = internals.causal_mask(layer, query, value)
            attention_mask = (
                causal
                if attention_mask is None
                else ops.logical_and(ops.cast(attention_mask, "bool"), causal)
            )
        if "query" in quantizers:  # else the query projection applied the scale
            query = ops.multiply(
                query, ops.cast(internals.inverse_sqrt_key_dim(layer), query.dtype)
            )
            query = quantizers["query"](query, training=train)
        scores = ops.einsum(internals.dot_product_equation(layer), key, query)
        score_q = quantizers["scores"]
        if attention_mask is not None:
            mask = _expand_mask(layer, scores, attention_mask)
            observed = ops.where(mask, scores, ops.zeros_like(scores))
            scores = score_q(scores, training=train, observed=observed)
            # The quantizer has used (and, training, updated) the range; the fill is its
            # minimum, the lowest code, and the SELECT output shares the range.
            lo, hi = score_q.range()
            scores = ops.where(mask, scores, ops.cast(lo, scores.dtype))
            scores = fake_quant_range(scores, lo, hi, score_q.num_bits, score_q.symmetric)
        else:
            scores = score_q(scores, training=train)
        if len(internals.attention_axes(layer)) == 1:
            probs = ops.softmax(scores, axis=-1)
        else:
            probs = internals.softmax(layer, scores)
        probs = quantizers["probs"](probs, training=train)
        final = probs
        if internals.dropout_rate(layer) > 0.0:
            final = internals.dropout(layer, probs, training)
        output = ops.einsum(internals.combine_equation(layer), final, value)
        output = quantizers["output"](output, training=train)
        return output, probs

    return compute_attention
