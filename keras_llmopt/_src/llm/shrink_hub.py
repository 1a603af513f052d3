"""Rebuilds a KerasHub CausalLM as the same class from a smaller backbone config.

The backbone config gets the new head counts, MLP width and depth (every per-layer
list in it is cut to the kept layers); the new backbone is built from it, and each
kept transformer layer's weights are copied from its original, sliced: weights of
the attention by the kept query / key-value heads, the others by the kept MLP
channels. The result saves and loads with KerasHub alone.
"""

from keras_llmopt._src.core import model_copy
from keras_llmopt._src.llm import slicing, structures_hub

HEAD_KEYS = ("num_query_heads", "num_heads", "num_attention_heads")
KV_KEY = "num_key_value_heads"


def _refuse(backbone, what, why, accepted):
    raise ValueError(
        f"{type(backbone).__name__}: cannot remove {what}: {why}. Accepted: {accepted}"
    )


def _set_heads(config, backbone, counts, head_dim):
    key = next((k for k in HEAD_KEYS if k in config), None)
    if key is None or "head_dim" not in config:
        _refuse(
            backbone,
            "attention heads",
            "its config has no `head_dim` argument, so its head size is hidden_dim / heads "
            "and would change with the head count",
            "FFNPruning and DepthPruning for this family, or a family whose config takes "
            "`head_dim` (Mistral, Gemma, Qwen 3, GPT-OSS)",
        )
    num_heads, num_kv = counts
    if config.get(KV_KEY) is None and num_kv != num_heads:
        _refuse(backbone, "key/value heads", f"its config has no `{KV_KEY}`", "whole heads")
    config[key] = num_heads
    if KV_KEY in config:
        config[KV_KEY] = num_kv
    if config.get("head_dim") is None:
        config["head_dim"] = head_dim


def _set_width(config, backbone, old_width, new_width):
    if "intermediate_dim" not in config:
        _refuse(backbone, "MLP channels", "its config has no `intermediate_dim`", "heads, depth")
    factor = config["intermediate_dim"] / old_width
    if factor not in (1, 2):
        _refuse(
            backbone,
            "MLP channels",
            f"`intermediate_dim`={config['intermediate_dim']} is not 1 or 2 times the MLP "
            f"width {old_width}",
            "heads, depth",
        )
    config["intermediate_dim"] = int(new_width * factor)


def _cut_depth(config, kept_layers):
    old = config["num_layers"]
    config["num_layers"] = len(kept_layers)
    for key, value in config.items():
        if isinstance(value, list | tuple) and len(value) == old and key != "num_layers":
            config[key] = [value[i] for i in kept_layers]


def _set_hidden(config, backbone, width):
    if "head_dim" not in config:
        _refuse(
            backbone,
            "hidden channels",
            "its config has no `head_dim` argument, so its head size is hidden_dim / heads "
            "and would change with the width",
            "a family whose config takes `head_dim` (Mistral, Gemma, Qwen 3, GPT-OSS)",
        )
    if config.get("head_dim") is None:
        config["head_dim"] = config["hidden_dim"] // next(
            config[k] for k in HEAD_KEYS if k in config
        )
    config["hidden_dim"] = width


def _copy_layer(old, new, attention, heads, mlp_kept, where, hidden=None):
    in_attention = set()
    if attention is not None:
        in_attention = {id(w) for w in attention.layer.weights}
    q_kv = heads.get(attention.block) if attention is not None else None
    if len(old.weights) != len(new.weights):
        raise ValueError(f"{where}: the rebuilt layer has other weights than the original.")
    for old_w, new_w in zip(old.weights, new.weights):
        if id(old_w) in in_attention:
            dims = []
            if q_kv is not None:
                dims = [(attention.num_heads, q_kv[0]), (attention.num_kv_heads, q_kv[1])]
            kept = slicing.kept_by_size(*dims, *([hidden] if hidden else []))
        else:
            dims = [mlp_kept] if mlp_kept else []
            kept = slicing.kept_by_size(*dims, *([hidden] if hidden else []))
        value = slicing.sliced(old_w.numpy(), new_w.shape, kept, f"{where} weight {old_w.path!r}")
        new_w.assign(value.astype(new_w.dtype))


def rebuild_hub(model, found, heads=None, mlps=None, removed_blocks=(), hidden=None):
    """A KerasHub model of the same class with fewer heads, channels or blocks.

    Args:
        model: A KerasHub CausalLM or backbone.
        found: Its ``Structures`` (``structures_hub.hub_structures``).
        heads: ``{block: (kept query heads, kept key/value heads)}``, the same counts
            in every block.
        mlps: ``{block: kept channels}``, the same count in every block.
        removed_blocks: Indices of the transformer layers removed.
        hidden: Kept channels of the residual stream (``hidden_dim``), or ``None``.

    Returns:
        The new model, compiled like ``model`` (fresh optimizer, same sampler).

    Raises:
        ValueError: The family's config cannot express the request (no ``head_dim``,
            no ``intermediate_dim``), naming the family and what it accepts.

    Example:
        >>> import keras_hub
        >>> backbone = keras_hub.models.GemmaBackbone(
        ...     vocabulary_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        ...     hidden_dim=16, intermediate_dim=32, head_dim=8)
        >>> found = structures_hub.hub_structures(backbone)
        >>> small = rebuild_hub(backbone, found, mlps={0: range(8), 1: range(8)},
        ...                     removed_blocks=[1])
        >>> small.num_layers, small.get_config()["intermediate_dim"]
        (1, 16)
    """
    heads, mlps = dict(heads or {}), {k: list(v) for k, v in (mlps or {}).items()}
    heads = {k: (list(q), list(kv)) for k, (q, kv) in heads.items()}
    backbone = structures_hub.backbone_of(model)
    config = backbone.get_config()
    attention = {a.block: a for a in found.attention}
    widths = {m.block: m.width for m in found.mlps}
    if heads:
        first = next(iter(heads.values()))
        _set_heads(config, backbone, (len(first[0]), len(first[1])), found.attention[0].head_dim)
    if mlps:
        block = next(iter(mlps))
        _set_width(config, backbone, widths[block], len(mlps[block]))
    if hidden is not None:
        old_width = int(config["hidden_dim"])
        _set_hidden(config, backbone, len(hidden))
        hidden = (old_width, list(hidden))
    kept_layers = [i for i in range(len(backbone.transformer_layers)) if i not in removed_blocks]
    if removed_blocks:
        _cut_depth(config, kept_layers)
    rebuilt = type(backbone).from_config(config)
    old_layers = {id(w) for layer in backbone.transformer_layers for w in layer.weights}
    outer_old = [w for w in backbone.weights if id(w) not in old_layers]
    new_layers = {id(w) for layer in rebuilt.transformer_layers for w in layer.weights}
    outer_new = [w for w in rebuilt.weights if id(w) not in new_layers]
    outer_kept = slicing.kept_by_size(hidden) if hidden else {}
    for old_w, new_w in zip(outer_old, outer_new, strict=True):
        value = slicing.sliced(old_w.numpy(), new_w.shape, outer_kept, f"weight {old_w.path!r}")
        new_w.assign(value.astype(new_w.dtype))
    for new_index, old_index in enumerate(kept_layers):
        mlp_kept = (widths[old_index], mlps[old_index]) if old_index in mlps else None
        _copy_layer(
            backbone.transformer_layers[old_index],
            rebuilt.transformer_layers[new_index],
            attention.get(old_index),
            heads,
            mlp_kept,
            f"{type(backbone).__name__} layer {old_index}",
            hidden,
        )
    if model is backbone:
        return rebuilt
    task = type(model)(backbone=rebuilt, preprocessor=getattr(model, "preprocessor", None))
    return model_copy.compile_like(task, model)
