"""Structural pruning: remove whole heads, MLP channels or blocks, and rebuild the model smaller.

``prune_structures(model, data, HeadPruning(0.25))`` finds the model's structures
(``structures_graph`` / ``structures_hub``), scores them on calibration data
(``structure_importance``), chooses what stays (``structure_plan``) and rebuilds a
new model with smaller layers (``shrink_graph`` / ``shrink_hub``). The user's model
is never changed; the result carries a :class:`StructuralReport` as
``structural_report``.
"""

import dataclasses
import time

import keras
from absl import logging

from keras_llmopt._src.core import layer_state, targeting
from keras_llmopt._src.llm import calibration_data as data_lib
from keras_llmopt._src.llm import (
    hidden_pruning,
    shrink_graph,
    shrink_hub,
    structure_plan,
    structures_graph,
    structures_hub,
)
from keras_llmopt._src.llm import structural_configs as configs
from keras_llmopt._src.llm import structure_importance as importance_lib


@dataclasses.dataclass
class StructuralReport:
    """What a structural pass removed.

    Attributes:
        method: The config's description.
        changes: One dict per pruned structure: ``path``, ``kind`` (``"heads"``,
            ``"mlp"``, ``"block"``), ``before``, ``after`` and ``removed`` indices.
        parameters_before: ``count_params()`` of the input model.
        parameters_after: ``count_params()`` of the result.
        seconds: Wall time.
        notes: What was done otherwise than asked, and why (one line each).

    Example:
        >>> StructuralReport("ffn_pruning 50%", [], 100, 60, 0.1).removed_fraction
        0.4
    """

    method: str
    changes: list
    parameters_before: int
    parameters_after: int
    seconds: float
    notes: list = dataclasses.field(default_factory=list)

    @property
    def removed_fraction(self):
        """Share of the parameters removed."""
        return 1.0 - self.parameters_after / self.parameters_before

    def to_record(self):
        """Plain data (JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record):
        """Inverse of :meth:`to_record`."""
        return cls(**record)

    def __str__(self):
        lines = [
            f"{self.method}: {self.parameters_before:,} -> {self.parameters_after:,} "
            f"parameters ({self.removed_fraction:.1%} removed), {self.seconds:.1f} s"
        ]
        for change in self.changes:
            removed = change["removed"]
            shown = removed if len(removed) <= 8 else f"{removed[:8]}... ({len(removed)})"
            lines.append(
                f"  {change['path']:<40} {change['kind']:<6} {change['before']} -> "
                f"{change['after']}  removed {shown}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def find_structures(model):
    """The model's prunable structures, or a clear refusal for a model that cannot be rebuilt.

    Example:
        >>> from keras_llmopt import reference
        >>> len(find_structures(reference.build_gpt("tiny")).blocks)
        2
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Structural pruning takes a keras.Model. Received: {type(model).__name__}")
    if not model.built:
        raise ValueError(f"Structural pruning: model {model.name!r} is not built; call it once.")
    states = sorted({state.technique for _, state in layer_state.find_states(model)})
    if states:
        raise ValueError(
            f"Structural pruning: {model.name!r} carries {states} layer states; strip them "
            "first (strip_pruning / strip_quantization / strip_clustering), prune the "
            f"structures, then apply them again. Received: a model with {states} states"
        )
    found = structures_hub.hub_structures(model) or structures_graph.graph_structures(model)
    if found is None:
        raise ValueError(
            f"Structural pruning: {model.name!r} is a subclassed model "
            f"({type(model).__name__}) whose layers cannot be rebuilt smaller from outside. "
            "Accepted: functional and Sequential models, KerasHub CausalLMs and backbones; "
            "or prune it in place with `sparsity.prune_low_magnitude` / `llm.oneshot`"
        )
    return found


def _selected(records, config, what, model, why_none=None):
    patterns = configs_patterns(config)
    chosen = [
        r
        for r in records
        if (not patterns[0] or targeting.first_match(r.path, patterns[0]))
        and not targeting.first_match(r.path, patterns[1])
    ]
    if not chosen:
        why = f" ({why_none})" if why_none and not records else ""
        raise ValueError(
            f"{type(config).__name__}: no {what} of {model.name!r} to prune{why}. Found: "
            f"{[r.path for r in records][:6]}. Check `targets` / `ignore`, or use another "
            "structural config for this model"
        )
    return chosen


def configs_patterns(config):
    """``(targets, ignore)`` patterns of a config, as tuples.

    Example:
        >>> configs_patterns(configs.FFNPruning(0.5, ignore="block_0*"))
        ((), ('block_0*',))
    """
    return tuple(config.targets or ()), tuple(config.ignore or ())


def _check_uniform(config, found, model):
    if found.kind == "keras_hub" and config.allocation == "global":
        raise ValueError(
            f"{type(config).__name__}: a KerasHub model ({type(model).__name__}) takes one "
            "size for every layer from its config. Received: allocation='global'; "
            "accepted: allocation='uniform'"
        )
    if found.kind == "keras_hub" and (config.targets or config.ignore):
        raise ValueError(
            f"{type(config).__name__}: a KerasHub model takes one size for every layer, so "
            f"`targets` / `ignore` cannot pick layers. Received: targets={config.targets}, "
            f"ignore={config.ignore}"
        )


def _head_plan(config, chosen, scores):
    plan = {}
    if config.allocation == "global":
        units = {a.path: scores[a.path].reshape(a.num_kv_heads, -1).sum(axis=1) for a in chosen}
        counts = structure_plan.global_allocation(units, config.fraction)
        for a in chosen:
            plan[a.path] = structure_plan.kept_heads(
                a, scores[a.path], counts[a.path] * a.group_size
            )
        return plan
    for a in chosen:
        count = structure_plan.choose_head_count(a, config.fraction, config.num_heads)
        plan[a.path] = structure_plan.kept_heads(a, scores[a.path], count)
    return plan


def _mlp_plan(config, chosen, scores):
    if config.allocation == "global":
        counts = structure_plan.global_allocation(
            {m.path: scores[m.path] for m in chosen}, config.fraction
        )
    else:
        counts = {
            m.path: structure_plan.width_count(
                m.width, config.fraction, config.intermediate_dim, "MLP", m.path
            )
            for m in chosen
        }
    return {m.path: structure_plan.kept_top(scores[m.path], counts[m.path]) for m in chosen}


def _rebuild_width(model, found, heads_plan, mlp_plan, chosen_heads, chosen_mlps):
    if found.kind == "keras_hub":
        heads = {a.block: heads_plan[a.path] for a in chosen_heads}
        mlps = {m.block: mlp_plan[m.path] for m in chosen_mlps}
        return shrink_hub.rebuild_hub(model, found, heads=heads, mlps=mlps)
    changes = {}
    for a in chosen_heads:
        kept_q, kept_kv = heads_plan[a.path]
        kept = (
            {a.num_heads: kept_q}
            if a.num_heads == a.num_kv_heads
            else {
                a.num_heads: kept_q,
                a.num_kv_heads: kept_kv,
            }
        )
        if isinstance(a.layer, keras.layers.GroupQueryAttention):
            overrides = {"num_query_heads": len(kept_q), "num_key_value_heads": len(kept_kv)}
        else:
            overrides = {"num_heads": len(kept_q)}
        changes[id(a.layer)] = (overrides, kept)
    for m in chosen_mlps:
        kept = {m.width: mlp_plan[m.path]}
        for up in m.ups:
            changes[id(up)] = ({"units": len(mlp_plan[m.path])}, kept)
        changes[id(m.down)] = ({}, kept)
    return shrink_graph.rebuild_graph(model, changes, {})


def _width_pass(model, config, found, batches, notes):
    _check_uniform(config, found, model)
    is_heads = isinstance(config, configs.HeadPruning)
    chosen_heads, chosen_mlps = [], []
    if is_heads:
        why = found.notes.get("attention")
        chosen_heads = _selected(found.attention, config, "attention heads", model, why)
    else:
        chosen_mlps = _selected(found.mlps, config, "MLP", model, found.notes.get("mlp"))
    head_scores, mlp_scores = importance_lib.width_importance(
        model, batches, chosen_heads, chosen_mlps, config.importance, notes
    )
    heads_plan = _head_plan(config, chosen_heads, head_scores) if is_heads else {}
    mlp_plan = {} if is_heads else _mlp_plan(config, chosen_mlps, mlp_scores)
    changes = [
        _change(a.path, "heads", a.num_heads, heads_plan[a.path][0]) for a in chosen_heads
    ] + [_change(m.path, "mlp", m.width, mlp_plan[m.path]) for m in chosen_mlps]
    rebuilt = _rebuild_width(model, found, heads_plan, mlp_plan, chosen_heads, chosen_mlps)
    return rebuilt, changes


def _change(path, kind, before, kept):
    removed = sorted(set(range(before)) - set(kept))
    return {"path": path, "kind": kind, "before": before, "after": len(kept), "removed": removed}


def _depth_pass(model, config, found, batches):
    blocks = _selected(found.blocks, config, "residual block", model)
    if config.num_layers >= len(found.blocks):
        raise ValueError(
            f"DepthPruning: {model.name!r} has {len(found.blocks)} blocks; at least one must "
            f"stay. Received: num_layers={config.num_layers}; accepted: 1 to "
            f"{len(found.blocks) - 1}"
        )
    if config.num_layers > len(blocks):
        raise ValueError(
            f"DepthPruning: only {len(blocks)} blocks are selected by `targets` / `ignore`. "
            f"Received: num_layers={config.num_layers}"
        )
    if config.importance == "block_influence":
        scores = importance_lib.block_influence(model, batches, found.blocks)
    else:
        scores = importance_lib.block_magnitude(found.blocks)
    candidates = sorted((scores[b.index], b.index) for b in blocks)
    removed = sorted(index for _, index in candidates[: config.num_layers])
    if found.kind == "keras_hub":
        rebuilt = shrink_hub.rebuild_hub(model, found, removed_blocks=removed)
    else:
        skipped = {id(op): r for i in removed for op, r in found.blocks[i].adds}
        rebuilt = shrink_graph.rebuild_graph(model, {}, skipped)
    changes = [
        {
            "path": found.blocks[i].path,
            "kind": "block",
            "before": found.blocks[i].parameters,
            "after": 0,
            "removed": [i],
        }
        for i in removed
    ]
    return rebuilt, changes


def prune_structures(
    model, calibration_data, config, *, num_samples=128, sequence_length=None, batch_size=8
):
    """Removes whole heads, MLP channels or blocks; returns a new, smaller model.

    Args:
        model: A functional or Sequential model, or a KerasHub CausalLM / backbone.
        calibration_data: Token ids ``(N, T)``, a dict of arrays, a dataset, or strings
            (a KerasHub CausalLM with a preprocessor); may be ``None`` with
            ``importance="magnitude"``.
        config: ``HeadPruning``, ``FFNPruning``, ``DepthPruning`` (or its dict).
        num_samples: Calibration examples used.
        sequence_length: Cut examples to this many positions.
        batch_size: Examples per forward pass.

    Returns:
        A new model of the same kind (a KerasHub model: the same class, from a
        smaller config) with ``structural_report``. The input model is unchanged.

    Raises:
        ValueError: A request the model cannot meet (more heads than it has, a count
            that breaks GQA grouping, a family whose config cannot express it, a
            subclassed model), naming the layer and what is accepted.

    Example:
        >>> import numpy as np
        >>> from keras_llmopt import reference
        >>> model = reference.build_gpt("tiny")
        >>> data = np.random.default_rng(0).integers(0, 256, (4, 16)).astype("int32")
        >>> small = prune_structures(model, data, configs.FFNPruning(fraction=0.5))
        >>> small.get_layer("block_0_mlp_up").units, model.get_layer("block_0_mlp_up").units
        (128, 256)
    """
    config = configs_lib_from(config)
    start = time.perf_counter()
    found = find_structures(model)
    batches = None
    if config.importance != "magnitude":
        if calibration_data is None:
            raise ValueError(
                f"{type(config).__name__}: importance={config.importance!r} needs "
                "calibration data. Received: calibration_data=None; accepted: token ids, "
                "a dataset or strings, or importance='magnitude' (weights only)"
            )
        batches = data_lib.calibration_batches(
            model, calibration_data, num_samples, sequence_length, batch_size
        )
    notes = []
    if isinstance(config, configs.DepthPruning):
        rebuilt, changes = _depth_pass(model, config, found, batches)
    elif isinstance(config, configs.HeadPruning | configs.FFNPruning):
        rebuilt, changes = _width_pass(model, config, found, batches, notes)
    else:
        rebuilt, changes = hidden_pruning.hidden_pass(model, config, found, batches)
    report = StructuralReport(
        config.describe(),
        changes,
        int(model.count_params()),
        int(rebuilt.count_params()),
        time.perf_counter() - start,
        notes,
    )
    object.__setattr__(rebuilt, "structural_report", report)
    logging.info("%s", report)
    return rebuilt


def configs_lib_from(config):
    """A structural config from a config or its dict.

    Example:
        >>> configs_lib_from({"method": "depth_pruning", "num_layers": 1}).num_layers
        1
    """
    if isinstance(config, dict):
        cls = configs.STRUCTURAL_CLASSES.get(config.get("method"))
        if cls is None:
            raise ValueError(
                f"A structural config needs `method` in {sorted(configs.STRUCTURAL_CLASSES)}. "
                f"Received: method={config.get('method')!r}"
            )
        return cls.from_config(config)
    if not isinstance(config, configs.StructuralConfig):
        raise ValueError(
            "`config` must be HeadPruning, FFNPruning, DepthPruning or HiddenPruning. "
            f"Received: config={config!r}"
        )
    return config


_PASS_ARGS = ("num_samples", "sequence_length", "batch_size")


def _shorthand(config_class, name):
    def prune(model, calibration_data=None, **kwargs):
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k not in _PASS_ARGS}
        return prune_structures(model, calibration_data, config_class(**settings), **kwargs)

    prune.__name__ = name
    prune.__doc__ = (
        f"``prune_structures(model, data, {config_class.__name__}(**settings), ...)``; "
        "settings and pass arguments (num_samples, sequence_length, batch_size) as "
        "keywords.\n\n"
        f"    Example:\n        >>> {name}.__name__\n        '{name}'\n"
    )
    return prune


prune_heads = _shorthand(configs.HeadPruning, "prune_heads")
prune_ffn = _shorthand(configs.FFNPruning, "prune_ffn")
prune_layers = _shorthand(configs.DepthPruning, "prune_layers")
prune_hidden = _shorthand(configs.HiddenPruning, "prune_hidden")
