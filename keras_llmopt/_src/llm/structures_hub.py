"""Prunable structures of a KerasHub CausalLM (or backbone), found per transformer layer.

Each of ``backbone.transformer_layers`` is a block. Its attention is the sub-layer
holding separate query / key / value / output EinsumDense projections with a heads
axis (fused query-key-value families have none: their heads cannot be removed one
by one). Its MLP is the 2-D projections outside the attention, created last the
down projection (``F -> hidden``) and before it the up and gate ones
(``hidden -> F``); mixture-of-experts blocks have none.
"""

import keras

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.llm import structures

_PROJECTIONS = {
    "query": ("query",),
    "key": ("key",),
    "value": ("value",),
    "output": ("attention_output", "output_dense", "o_proj", "out_proj", "output"),
}


def backbone_of(model):
    """The KerasHub backbone of a CausalLM (or the backbone itself), else ``None``.

    Example:
        >>> backbone_of(keras.layers.Dense(2)) is None
        True
    """
    backbone = getattr(model, "backbone", model)
    if isinstance(getattr(backbone, "transformer_layers", None), list | tuple):
        return backbone
    return None


def _projections(layer):
    found = {}
    children = [c for c in keras_compat.child_layers(layer) if isinstance(c, keras.layers.Layer)]
    for role, names in _PROJECTIONS.items():
        for child in children:
            name = child.name.lower()
            others = [r for r in ("query", "key", "value") if r != role]
            if any(name.startswith(n) for n in names) and not any(o in name for o in others):
                found.setdefault(role, child)
    return found if len(found) == 4 else None


def _find_attention(layer, paths, index):
    for node in layer_tree.walk_layers(layer):
        projections = _projections(node.layer)
        if projections and all(
            isinstance(p, keras.layers.EinsumDense) for p in projections.values()
        ):
            record = structures.attention_of(
                paths.get(id(node.layer), node.path), node.layer, block=index, **projections
            )
            if record is not None:
                return record
    return None


def _dense_2d(layer):
    kernel = getattr(layer, "kernel", None) if layer.built else None
    is_dense = isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense)
    return is_dense and kernel is not None and len(kernel.shape) == 2


def _find_mlp(layer, attention, paths, hidden, index):
    skip = set()
    if attention is not None:
        skip = {id(node.layer) for node in layer_tree.walk_layers(attention.layer)}
        skip.add(id(attention.layer))
    dense = [
        node.layer
        for node in layer_tree.walk_layers(layer)
        if id(node.layer) not in skip and _dense_2d(node.layer)
    ]
    if not dense:
        return None
    down = dense[-1]
    width, out = (int(n) for n in down.kernel.shape)
    ups = [d for d in dense[:-1] if tuple(d.kernel.shape) == (hidden, width)]
    if out != hidden or not ups:
        return None
    return structures.MLP(paths.get(id(down), down.name), ups, down, width, index)


def hub_structures(model):
    """The :class:`~keras_llmopt._src.llm.structures.Structures` of a KerasHub model.

    Returns ``None`` when ``model`` has no ``transformer_layers``.

    Example:
        >>> import keras_hub
        >>> backbone = keras_hub.models.LlamaBackbone(
        ...     vocabulary_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        ...     hidden_dim=16, intermediate_dim=32)
        >>> found = hub_structures(backbone)
        >>> a = found.attention[0]
        >>> a.num_heads, a.num_kv_heads, a.head_dim, found.mlps[0].width, len(found.blocks)
        (4, 2, 4, 32, 2)
    """
    backbone = backbone_of(model)
    if backbone is None:
        return None
    paths = {id(node.layer): node.path for node in layer_tree.walk_layers(model)}
    hidden = int(backbone.get_config().get("hidden_dim") or 0)
    attention, mlps, blocks, notes = [], [], [], {}
    for index, layer in enumerate(backbone.transformer_layers):
        path = paths.get(id(layer), layer.name)
        found = _find_attention(layer, paths, index)
        if found is None:
            notes.setdefault("attention", f"{type(layer).__name__} has no per-head projections")
        else:
            attention.append(found)
        mlp = _find_mlp(layer, found, paths, hidden, index)
        if mlp is None:
            notes.setdefault("mlp", f"{type(layer).__name__} has no dense MLP (experts?)")
        else:
            mlps.append(mlp)
        blocks.append(
            structures.Block(index, path, [layer], structures.parameters_of([layer]), layer=layer)
        )
    return structures.Structures("keras_hub", attention, mlps, blocks, notes)
