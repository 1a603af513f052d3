"""What structural pruning would remove: per-layer head and channel importance, per block.

``structure_summary(model, data, fraction)`` scores the model's heads, MLP channels
and blocks as the structural configs do and says, for ``fraction``, which heads
``HeadPruning`` would remove, how many channels ``FFNPruning`` would, and which block
``DepthPruning(1)`` would, with the parameters each would leave. Nothing is rebuilt
and the model is not changed. ``pipeline.inspect_model`` and ``keras-llmopt inspect``
print it.
"""

import dataclasses

import numpy as np

from keras_llmopt._src.llm import calibration_data as data_lib
from keras_llmopt._src.llm import structural, structure_plan
from keras_llmopt._src.llm import structural_configs as configs
from keras_llmopt._src.llm import structure_importance as importance_lib


@dataclasses.dataclass
class StructureSummary:
    """Scores and what a fraction would remove.

    Attributes:
        importance: ``"activation"`` (from calibration data) or ``"magnitude"``.
        fraction: The share asked about.
        attention: One dict per attention layer: ``path``, ``heads``, ``kv_heads``,
            ``scores`` (per query head), ``removed`` (heads ``HeadPruning`` removes),
            or ``refused`` (why it cannot).
        mlps: One dict per MLP: ``path``, ``width``, ``kept`` and score quantiles.
        blocks: One dict per block: ``path``, ``parameters``, ``score``.
        removed_block: The block ``DepthPruning(num_layers=1)`` removes.
        notes: Structures not found, and why.

    Example:
        >>> StructureSummary("magnitude", 0.25, [], [], [], None, {}).to_dict()["fraction"]
        0.25
    """

    importance: str
    fraction: float
    attention: list
    mlps: list
    blocks: list
    removed_block: object
    notes: dict

    def to_dict(self):
        """Plain data (JSON)."""
        return dataclasses.asdict(self)

    def __str__(self):
        lines = [f"structures ({self.importance} importance, fraction {self.fraction:g}):"]
        for a in self.attention:
            scores = " ".join(f"{s:.3g}" for s in a["scores"])
            verdict = a.get("refused") or f"removes heads {a['removed']}"
            lines.append(
                f"  {a['path']:<40} heads {a['heads']} (kv {a['kv_heads']}) [{scores}]: {verdict}"
            )
        for m in self.mlps:
            lines.append(
                f"  {m['path']:<40} width {m['width']} -> {m['kept']} "
                f"(scores min {m['min']:.3g}, median {m['median']:.3g}, max {m['max']:.3g})"
            )
        for b in self.blocks:
            mark = "  <- DepthPruning(1) removes it" if b["index"] == self.removed_block else ""
            lines.append(
                f"  block {b['index']} {b['path']:<32} {b['parameters']:>10,} params, "
                f"score {b['score']:.4g}{mark}"
            )
        for what, why in self.notes.items():
            lines.append(f"  no {what}: {why}")
        return "\n".join(lines)


def _attention_rows(found, head_scores, fraction):
    rows = []
    for a in found.attention:
        row = {
            "path": a.path,
            "heads": a.num_heads,
            "kv_heads": a.num_kv_heads,
            "scores": [float(s) for s in head_scores[a.path]],
        }
        try:
            count = structure_plan.choose_head_count(a, fraction)
            kept, _ = structure_plan.kept_heads(a, head_scores[a.path], count)
            row["removed"] = sorted(set(range(a.num_heads)) - set(kept))
        except ValueError as error:
            row["refused"] = str(error)
        rows.append(row)
    return rows


def structure_summary(model, calibration_data=None, fraction=0.25, num_samples=32):
    """Importance of every head, MLP channel and block, and what ``fraction`` would remove.

    Args:
        model: A functional / Sequential model or a KerasHub CausalLM.
        calibration_data: Token ids (or anything ``llm.oneshot`` takes); ``None``
            scores by weight magnitude.
        fraction: Share of heads and channels asked about, in (0, 1).
        num_samples: Calibration examples used.

    Returns:
        A :class:`StructureSummary`.

    Example:
        >>> from keras_llmopt import reference
        >>> summary = structure_summary(reference.build_gpt("tiny"), fraction=0.5)
        >>> summary.mlps[0]["kept"], len(summary.attention[0]["removed"])
        (128, 1)
    """
    configs.HeadPruning(fraction=fraction)  # validates the fraction
    found = structural.find_structures(model)
    importance = "magnitude" if calibration_data is None else "activation"
    batches = None
    if calibration_data is not None:
        batches = data_lib.calibration_batches(model, calibration_data, num_samples)
    head_scores, channel_scores = importance_lib.width_importance(
        model, batches, found.attention, found.mlps, importance
    )
    mlps = []
    for m in found.mlps:
        scores = channel_scores[m.path]
        mlps.append(
            {
                "path": m.path,
                "width": m.width,
                "kept": structure_plan.width_count(m.width, fraction),
                "min": float(np.min(scores)),
                "median": float(np.median(scores)),
                "max": float(np.max(scores)),
            }
        )
    if batches is None:
        block_scores = importance_lib.block_magnitude(found.blocks)
    else:
        block_scores = importance_lib.block_influence(model, batches, found.blocks)
    blocks = [
        {"index": b.index, "path": b.path, "parameters": b.parameters, "score": float(s)}
        for b, s in zip(found.blocks, block_scores)
    ]
    removed = int(np.argmin(block_scores)) if len(found.blocks) > 1 else None
    return StructureSummary(
        importance,
        float(fraction),
        _attention_rows(found, head_scores, fraction),
        mlps,
        blocks,
        removed,
        dict(found.notes),
    )
