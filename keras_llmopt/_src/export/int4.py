"""Int4 weights in a ``.tflite``: LiteRT's AI Edge Quantizer on the converter's fp32 file.

The TFLite converter has no 4-bit weight mode (and cannot read sub-8-bit fake
quantization), so ``to_tflite(..., quantization="int4")`` converts to fp32 first and
lets the AI Edge Quantizer store the weights of every op it supports (fully-connected
layers) as symmetric int4, per output channel or in blocks of input rows, and embedding
tables (a GATHER of a table no other op reads, rewritten as EMBEDDING_LOOKUP:
``embedding_lookup``) as int8 per row, the precision of ``"dynamic_int8"``. Activations
stay float and are quantized on the fly for the integer matmuls (its "dynamic" recipe).
From a 4-bit quantization-aware model (``"4bit_weights*"`` schemes, exported through its
dequantized weights) the same granularity is used, so the weights land on the grid they
were trained on. The grids a one-shot quantizer
chose (``weight_grids.WeightGrid``) are written over the quantizer's own rounding, so
the file holds exactly those codes and scales.
"""

import contextlib
import io

from keras_llmopt._src.export import embedding_lookup, weight_grids

BLOCK_SIZES = (32, 64, 128, 256)


def check_block_size(block_size):
    """Raises ``ValueError`` unless ``block_size`` is ``None`` or a supported block size.

    Example:
        >>> check_block_size(32)
    """
    if block_size is not None and (isinstance(block_size, bool) or block_size not in BLOCK_SIZES):
        raise ValueError(
            "`block_size` must be None (one scale per output channel) or one of "
            f"{list(BLOCK_SIZES)}. Received: block_size={block_size!r}"
        )


def quantize_weights_int4(content, block_size=None, grids=(), notes=None):
    """Returns ``content`` (an fp32 ``.tflite``) with int4 weights.

    Args:
        content: The fp32 flatbuffer's bytes.
        block_size: ``None`` for one scale per output channel, else the number of
            input rows sharing a scale (``BLOCK_SIZES``).
        grids: 4-bit ``weight_grids.WeightGrid`` objects at this granularity: their
            weights store the grid's codes and scales, not the quantizer's rounding
            (``weight_grids.keep_grids``, then checked with ``check_grids_kept``).
        notes: A list the embedding tables stored in int8 are reported to.

    Returns:
        The quantized flatbuffer's bytes.

    Raises:
        ValueError: A grid is not 4-bit, matches no weight of the file or has another
            granularity than ``block_size`` (see ``weight_grids.keep_grids``).

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> w = tf.constant(np.random.default_rng(0).normal(size=(64, 32)), tf.float32)
        >>> f = tf.function(lambda x: tf.matmul(x, w),
        ...                 input_signature=[tf.TensorSpec((1, 64), tf.float32)])
        >>> fp32 = tf.lite.TFLiteConverter.from_concrete_functions(
        ...     [f.get_concrete_function()], f).convert()
        >>> len(quantize_weights_int4(fp32)) < len(fp32) / 4
        True
    """
    check_block_size(block_size)
    grids = tuple(grids)
    weight_grids.check_mode(grids, "int4")
    from ai_edge_quantizer import quantizer, recipe

    granularity = (
        recipe.QuantGranularity.CHANNELWISE
        if block_size is None
        else getattr(recipe.QuantGranularity, f"BLOCKWISE_{block_size}")
    )
    content, lookups = embedding_lookup.gathers_as_lookups(content)
    manager = recipe.recipe_manager.RecipeManager()
    manager.add_dynamic_config(
        regex=".*",
        operation_name=recipe.TFLOperationName.ALL_SUPPORTED,
        num_bits=4,
        granularity=granularity,
    )
    if lookups:  # the tables: int8 per row (the config added last takes precedence)
        if notes is not None:
            notes.append(f"{lookups} embedding table(s) as EMBEDDING_LOOKUP, int8 per row")
        manager.add_dynamic_config(
            regex=".*",
            operation_name=recipe.TFLOperationName.EMBEDDING_LOOKUP,
            num_bits=8,
            granularity=recipe.QuantGranularity.CHANNELWISE,
        )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints sizes and timings
        result = quantizer.Quantizer(bytes(content), manager.get_quantization_recipe()).quantize()
    content = bytes(result.quantized_model)
    if grids:
        content = weight_grids.keep_grids(content, grids)
        weight_grids.check_grids_kept(content, grids)
    return content
