"""Where each matmul's inputs get their ranges: planned from one probing forward pass.

Full-integer int8 needs every FULLY_CONNECTED and BATCH_MATMUL input quantized,
whatever produced it. Producers with a rule of their own (Dense and EinsumDense
outputs, normalizations, residual adds, Keras attention) quantize their outputs; a
matmul fed by anything else (KerasHub's RMSNorm variants, a SwiGLU gate product, a
separate ``Activation`` layer, rotary embeddings, inline ``keras.ops``) gets a range on
its own input instead, at the consumer. And the products that layers compute inline
with ``keras.ops.einsum`` / ``matmul`` (KerasHub attention scores and mixes, MoE
experts) get ranges on their operands and results.

One forward pass on a small sample batch, before anything is installed, records which
layer call produced which tensor and which inline products each layer computes; the
plan is written into the layers' configs (``quantize_input``, ``inline_ops``, saved
with the model), so training, calibration and export all see the same placement.

On JAX, KerasHub attention calls the fused ``keras.ops.dot_product_attention`` instead of
its two einsums, so a plan made there has no inline attention products: quantize on
TensorFlow for a full-integer export (the strict int8 export names the float
BATCH_MATMULs otherwise).
"""

import contextlib

import numpy as np
from absl import logging

from keras_llmopt._src.core import hooks, inline_ops, layer_state, layer_tree, model_inputs
from keras_llmopt._src.quantization import configs as configs_lib

_PROBE_LENGTH = 8


def sample_batch(model):
    """A one-row batch of valid inputs for ``model`` (token ids, ones for masks).

    Returns ``None`` when the inputs cannot be described.

    Example:
        >>> from keras_llmopt import reference
        >>> sample_batch(reference.build_gpt("tiny")).shape
        (1, 64)
    """
    try:
        described = model_inputs.describe_inputs(model, batch_size=1)
        if described.has_dynamic_length:
            limit = described.max_sequence_length
            length = min(_PROBE_LENGTH, limit) if limit else _PROBE_LENGTH
            described = model_inputs.describe_inputs(model, sequence_length=length, batch_size=1)
    except (TypeError, ValueError):
        return None
    rng = np.random.default_rng(0)
    values = []
    for spec in described.specs:
        shape = tuple(1 if axis is None else int(axis) for axis in spec.shape)
        if spec.is_mask:
            values.append(np.ones(shape, spec.dtype))
        elif spec.is_tokens or "int" in spec.dtype:
            high = described.vocabulary_size or 2
            values.append(rng.integers(0, high, shape).astype(spec.dtype))
        else:
            values.append(rng.standard_normal(shape).astype(spec.dtype))
    return described.pack(values)


def _flat(value):
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flat(v)]
    return [value]


def _first_input(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("inputs")


def _probe(model, sample, layers):
    """Runs ``model`` on ``sample``: every layer call and every inline product, in order."""
    calls = {path: [] for path in layers}  # path -> [(args, kwargs, outputs)]
    stack = []

    def recorder(path):
        def make(original):
            def hooked(*args, **kwargs):
                stack.append((path, len(calls[path])))
                try:
                    outputs = original(*args, **kwargs)
                finally:
                    stack.pop()
                calls[path].append((args, kwargs, outputs))
                return outputs

            return hooked

        return make

    with inline_ops.probing(lambda: stack[-1] if stack else None) as seen:
        with contextlib.ExitStack() as hooked:
            for path, layer in layers.items():
                hooked.enter_context(hooks.intercept(layer, "call", recorder(path)))
            model(sample, training=False)
    return calls, seen


def _output_quantized(layer, config, kwargs):
    if config is None:
        return False
    if isinstance(config, configs_lib.EmbeddingConfig) and not kwargs.get("reverse", False):
        # An 8-bit lookup keeps the table's int8 codes (GATHER); wider activations
        # requantize it (an output quantizer).
        return True
    try:
        quantizers = config.get_output_quantizers(layer)
        return bool(config.select_output_quantizers(layer, kwargs, quantizers))
    except Exception:  # a custom config that cannot answer for a call: assume float
        return False


def plan(model, chosen, scheme, plannable=None):
    """Plans input and inline-op ranges for the layers about to be quantized.

    Args:
        model: The working copy (no states installed yet).
        chosen: ``[(node, config, is_default)]`` from the quantization selection; the
            configs of built-in types are updated in place.
        scheme: The ``QuantizeScheme``.
        plannable: ``fn(path) -> bool``: whether a layer with no config may be
            quantized for its inline products (``ignore`` / ``targets``; default: all).

    Returns:
        ``[(node, InlineOpsConfig)]`` for layers without a config of their own that
        compute matmuls inline (to be quantized too).

    Example:
        >>> import keras
        >>> from keras_llmopt._src.core import layer_tree
        >>> from keras_llmopt._src.quantization import schemes
        >>> inputs = keras.Input((4,))
        >>> hidden = keras.layers.Activation("relu")(keras.layers.Dense(8, name="up")(inputs))
        >>> model = keras.Model(inputs, keras.layers.Dense(2, name="down")(hidden))
        >>> scheme = schemes.get_scheme("default_8bit")
        >>> nodes = {n.path: n for n in layer_tree.walk_layers(model)}
        >>> chosen = [(nodes[p], configs_lib.default_config(nodes[p].layer, scheme), True)
        ...           for p in ("up", "down")]
        >>> _ = plan(model, chosen, scheme)
        >>> [config.quantize_input for _, config, _ in chosen]
        [True, True]
    """
    sample = sample_batch(model)
    nodes = {
        node.path: node
        for node in layer_tree.walk_layers(model)
        if not isinstance(node.layer, layer_state.LayerState)
    }
    layers = {path: node.layer for path, node in nodes.items()}
    by_path = {node.path: (node, config) for node, config, _ in chosen}
    if sample is None:
        return _plan_without_probe(chosen, scheme)
    try:
        calls, seen = _probe(model, sample, layers)
    except Exception as error:  # an odd model: fall back to a range on every input
        logging.warning("quantize: could not probe model %r (%s)", model.name, error)
        return _plan_without_probe(chosen, scheme)

    quantized = set()
    for path, records in calls.items():
        config = by_path.get(path, (None, None))[1]
        for _, kwargs, outputs in records:
            if _output_quantized(layers[path], config, kwargs):
                quantized.update(id(x) for x in _flat(outputs))
    added = []
    for (path, index), products in seen.items():
        if index != 0:
            continue  # one plan per layer; every call follows the first call's
        node, config = by_path.get(path, (None, None))
        if isinstance(config, configs_lib.AttentionConfig):
            continue  # Keras attention: quantized by its own rule
        if config is not None and not isinstance(config, configs_lib._SchemeConfig):
            continue
        specs = [op.to_config() for op, _, _ in products]
        if config is None and plannable is not None and not plannable(path):
            continue
        if config is None:
            config = configs_lib.InlineOpsConfig(scheme, inline_ops=specs)
            added.append((nodes[path], config))
        else:
            config.inline_ops = specs
        for _, _, result in products:
            quantized.add(id(result))
    for path, (node, config) in by_path.items():
        if not isinstance(config, configs_lib.WeightedLayerConfig | configs_lib.EmbeddingConfig):
            continue
        for args, kwargs, _ in calls.get(path, []):
            x = _first_input(args, kwargs)
            if not config.quantizes_input(node.layer, kwargs):
                continue
            if "float" in str(getattr(x, "dtype", "")) and id(x) not in quantized:
                config.quantize_input = True
    del calls, seen  # the probe's tensors were kept alive until here on purpose
    return added


def _plan_without_probe(chosen, scheme):
    if scheme.activation_bits is None:
        return []
    for _, config, _ in chosen:
        if isinstance(config, configs_lib.WeightedLayerConfig):
            config.quantize_input = True
    return []
