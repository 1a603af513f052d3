"""``inspect_model``: what a model holds and what each transformation would touch."""

import collections
import dataclasses
import os

import keras
import numpy as np


@dataclasses.dataclass
class Inspection:
    """The facts ``keras-llmopt inspect`` prints.

    Attributes:
        name: The model's name.
        parameters: Number of parameters (every variable, masks excluded).
        bytes_by_dtype: ``{dtype: bytes}`` of the model's variables.
        sparsity: A ``SparsityReport`` (per-layer sparsity, dense vs sparse bytes).
        targets: ``{transformation: TargetReport}`` for pruning, quantization and
            clustering (default targeting: token embedding and output head left alone).
        pruned: Whether the model carries pruning masks.

    Example:
        >>> print(inspect_model(model))
    """

    name: str
    parameters: int
    bytes_by_dtype: dict
    sparsity: object
    targets: dict
    pruned: bool

    def to_dict(self):
        """Plain data (for JSON)."""
        return {
            "name": self.name,
            "parameters": self.parameters,
            "bytes_by_dtype": self.bytes_by_dtype,
            "pruned": self.pruned,
            "sparsity": self.sparsity.as_dict(),
            "targets": {k: v.as_dict() for k, v in self.targets.items()},
        }

    def __str__(self):
        total = sum(self.bytes_by_dtype.values())
        lines = [
            f"model {self.name!r}: {self.parameters:,} parameters, {total:,} bytes"
            + (" (pruned: carries masks)" if self.pruned else ""),
            "",
            "bytes by dtype:",
        ]
        for dtype, size in sorted(self.bytes_by_dtype.items()):
            lines.append(f"  {dtype:<10} {size:>12,}")
        lines += ["", "sparsity by weight:", str(self.sparsity)]
        for action, report in self.targets.items():
            lines += ["", f"{action}:", str(report)]
        return "\n".join(lines)


def _pruning_state_ids(model):
    """Ids of the pruning masks, thresholds and steps (state, not parameters)."""
    from keras_llmopt._src.sparsity.units import pruning_units

    ids = set()
    for unit in pruning_units(model):
        ids.add(id(unit.pruning_step))
        for pw in unit.pruned:
            ids.update((id(pw.mask), id(getattr(pw, "threshold", None))))
    return ids


def inspect_model(model):
    """Parameters, bytes by dtype, per-layer sparsity and per-transformation targets.

    Args:
        model: A Keras model or the path of a ``.keras`` file (pruned ones included).

    Returns:
        An :class:`Inspection` (print it for a report).

    Example:
        >>> from keras_llmopt import pipeline, reference
        >>> print(pipeline.inspect_model(reference.build_gpt("tiny")))
        model 'gpt_tiny': 140,... parameters, ...
    """
    from keras_llmopt._src.core import targeting
    from keras_llmopt._src.sparsity import report as sparsity_report_lib

    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise FileNotFoundError(f"inspect: no such model file. Received: model={path!r}")
        if not path.endswith(".keras"):
            raise ValueError(f"inspect: expected a .keras file. Received: model={path!r}")
        model = keras.saving.load_model(path, compile=False)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"inspect: expected a keras.Model or a .keras path. Received: {type(model).__name__}"
        )
    state = _pruning_state_ids(model)
    by_dtype = collections.Counter()
    parameters = 0
    for variable in model.variables:
        if id(variable) in state:
            continue
        size = int(np.prod(variable.shape))
        parameters += size
        by_dtype[str(variable.dtype)] += (
            size
            * np.dtype(
                "float16" if "bfloat16" in str(variable.dtype) else str(variable.dtype)
            ).itemsize
        )
    pruned = bool(state)
    targets = {}
    for action in ("pruned", "quantized", "clustered"):
        report, _ = targeting.select_layers(model, action=action)
        targets[
            {"pruned": "pruning", "quantized": "quantization", "clustered": "clustering"}[action]
        ] = report
    return Inspection(
        name=model.name,
        parameters=parameters,
        bytes_by_dtype=dict(by_dtype),
        sparsity=sparsity_report_lib.sparsity_report(model),
        targets=targets,
        pruned=pruned,
    )
