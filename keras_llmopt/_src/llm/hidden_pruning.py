"""Width (hidden size) pruning: fewer channels in the residual stream of the whole model.

The stream's width is set by the embeddings and by the layers writing into the stream
(each MLP's down projection, any Dense feeding a residual addition); every other layer
infers its input width when the graph is re-run. So a functional model is rebuilt with
those layers narrowed and every weight sliced along its axes of the old width. A
KerasHub backbone is rebuilt from its config with a smaller ``hidden_dim`` (only where
the config also takes ``head_dim``, which would otherwise change with it).
Importance: the channel's L2 norm over every block input on calibration data
(``activation``), or the norm of its embedding columns and norm scales (``magnitude``).
"""

import keras
import numpy as np

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.llm import (
    shrink_graph,
    shrink_hub,
    structure_importance,
    structure_plan,
    structures_hub,
)


def _stream_width(found, model):
    if not found.blocks:
        raise ValueError(
            f"HiddenPruning: no residual stream found in {model.name!r} (no residual "
            "additions); its width cannot be told apart from other layers' widths. Accepted: "
            "transformer-style functional models and KerasHub CausalLMs"
        )
    if found.kind == "keras_hub":
        return int(structures_hub.backbone_of(model).get_config()["hidden_dim"])
    return int(found.blocks[0].stream[0].shape[-1])


def _activation_scores(model, found, batches, width):
    total = np.zeros(width)
    if found.kind == "keras_hub":

        def record(index, x, y):
            del index, y
            values = keras.ops.convert_to_numpy(x).astype("float64").reshape(-1, width)
            total[:] += np.square(values).sum(axis=0)

        with structure_importance.block_calls(found.blocks, record):
            for batch in batches:
                model(batch, training=False)
        return np.sqrt(total)
    probe = keras.Model(
        model.input, [b.stream[0] for b in found.blocks] + [found.blocks[-1].stream[1]]
    )
    for batch in batches:
        for value in probe(batch, training=False):
            value = keras.ops.convert_to_numpy(value).astype("float64").reshape(-1, width)
            total += np.square(value).sum(axis=0)
    return np.sqrt(total)


def _magnitude_scores(model, width):
    total = np.zeros(width)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Embedding):
            table = keras.ops.convert_to_numpy(layer.embeddings).astype("float64")
            if table.shape[-1] == width:
                total += np.square(table).sum(axis=0)
        elif "norm" in type(layer).__name__.lower():
            for weight in layer.weights:
                if tuple(weight.shape) == (width,):
                    total += np.square(keras.ops.convert_to_numpy(weight).astype("float64"))
    return np.sqrt(total)


def _all_layers(model):
    return [node.layer for node in layer_tree.walk_layers(model)]


def _writers(model, found, width):
    """Layers that set the stream's width: embeddings, MLP downs, Dense into residual adds."""
    writers = {id(m.down): m.down for m in found.mlps}
    graph = keras_compat.graph_of(model)
    nodes = keras_compat.graph_nodes(graph)
    producer = {id(t): op for op, _, outs in nodes for t in outs}
    inputs_of = {id(op): ins for op, ins, _ in nodes}
    for block in found.blocks:
        for add, residual in block.adds:
            branch = producer.get(id(inputs_of[id(add)][1 - residual]))
            if isinstance(branch, keras.layers.Dense) and branch.units == width:
                writers[id(branch)] = branch
    for op, _, _ in nodes:
        if isinstance(op, keras.layers.Embedding) and op.output_dim == width:
            writers[id(op)] = op
    return writers


def _rebuild_graph(model, found, width, kept):
    changes = {}
    for key, layer in _writers(model, found, width).items():
        name = "output_dim" if isinstance(layer, keras.layers.Embedding) else "units"
        changes[key] = ({name: len(kept)}, {width: kept})
    for layer in _all_layers(model):
        changes.setdefault(id(layer), ({}, {width: kept}))
    try:
        return shrink_graph.rebuild_graph(model, changes, {})
    except ValueError as error:
        raise ValueError(
            f"HiddenPruning: {model.name!r} could not be rebuilt with a {len(kept)}-wide "
            f"stream: {error}. Accepted: models whose stream is read and written by "
            "Embedding, Dense, EinsumDense, normalization and attention layers"
        ) from error


def hidden_pass(model, config, found, batches):
    """Narrows the residual stream by ``config.fraction``; returns ``(model, changes)``.

    Example:
        >>> from keras_llmopt import reference
        >>> from keras_llmopt._src.llm import structural, structural_configs
        >>> model = reference.build_gpt("tiny")
        >>> found = structural.find_structures(model)
        >>> small, changes = hidden_pass(
        ...     model, structural_configs.HiddenPruning(0.25, importance="magnitude"), found, None)
        >>> small.get_layer("token_embedding").output_dim, changes[0]["after"]
        (48, 48)
    """
    width = _stream_width(found, model)
    if config.importance == "activation":
        scores = _activation_scores(model, found, batches, width)
    else:
        scores = _magnitude_scores(model, width)
    count = structure_plan.width_count(width, config.fraction, None, "hidden stream", "")
    kept = structure_plan.kept_top(scores, count)
    if found.kind == "keras_hub":
        rebuilt = shrink_hub.rebuild_hub(model, found, hidden=kept)
    else:
        rebuilt = _rebuild_graph(model, found, width, kept)
    removed = sorted(set(range(width)) - set(kept))
    change = {"path": "hidden", "kind": "hidden", "before": width, "after": count}
    return rebuilt, [{**change, "removed": removed}]
