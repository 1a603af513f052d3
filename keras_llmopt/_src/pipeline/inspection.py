"""``inspect_model``: what a model holds and what each transformation would touch.

Each transformation's verdict comes from the selection code the technique itself runs
(pruning and clustering: ``core.targeting.select_layers`` with their defaults;
quantization: ``quantization.quantize.select_layers`` as ``quantize_model`` calls it),
so what ``inspect`` says is what the technique does.
"""

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
            clustering with each technique's defaults (pruning and clustering leave the
            token embedding and output head alone; quantization, with the default
            scheme, takes every layer it has a config for).
        pruned: Whether the model carries pruning masks.
        structures: A ``StructureSummary`` (per-layer head and channel importance,
            what structural pruning at ``fraction`` would remove), or the reason
            there is none (a subclassed model).

    Example:
        >>> print(inspect_model(model))
    """

    name: str
    parameters: int
    bytes_by_dtype: dict
    sparsity: object
    targets: dict
    pruned: bool
    structures: object = None

    def to_dict(self):
        """Plain data (for JSON)."""
        return {
            "name": self.name,
            "parameters": self.parameters,
            "bytes_by_dtype": self.bytes_by_dtype,
            "pruned": self.pruned,
            "sparsity": self.sparsity.as_dict(),
            "targets": {k: v.as_dict() for k, v in self.targets.items()},
            "structures": (
                self.structures.to_dict()
                if hasattr(self.structures, "to_dict")
                else self.structures
            ),
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
        if self.structures is not None:
            lines += ["", str(self.structures)]
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


def _quantizes_something(layer, config):
    """Whether ``config`` gives ``layer`` a non-empty state (as ``QuantizeState.setup``)."""
    from keras_llmopt._src.quantization import configs

    if config.get_weights_and_quantizers(layer) or config.get_activations_and_quantizers(layer):
        return True
    if list(config.get_output_quantizers(layer)):
        return True
    for planned in ("get_input_quantizers", "get_inline_op_quantizers"):  # the placement plan
        if getattr(config, planned, None) and getattr(config, planned)(layer):
            return True
    return isinstance(config, configs.AttentionConfig) and bool(
        config.get_attention_quantizers(layer)
    )


def _quantized_weights(layer, config):
    found = []
    for ref, _ in config.get_weights_and_quantizers(layer):
        variable = getattr(layer, ref, None) if isinstance(ref, str) else ref
        name = ref if isinstance(ref, str) else getattr(ref, "name", "weight")
        found.append((name.split("/")[-1], tuple(getattr(variable, "shape", ()))))
    return found


def quantization_targets(model, scheme="default_8bit"):
    """What ``quantize_model(model, scheme=scheme)`` would quantize and leave in float.

    Asks the selection code ``quantize_model`` runs (the model is not changed): the
    selected paths are its report's ``quantized`` list, the skipped ones (with their
    reasons) its ``skipped``.

    Args:
        model: A built ``keras.Model`` (patched ones too: their states are not layers).
        scheme: A quantization scheme name or ``QuantizeScheme``.

    Returns:
        A ``TargetReport`` with action ``"quantized"``.

    Example:
        >>> from keras_llmopt import reference
        >>> report = quantization_targets(reference.build_gpt("tiny"))
        >>> "block_0_attention/query" in report.selected_paths
        True
    """
    from keras_llmopt._src.core import layer_tree, targeting
    from keras_llmopt._src.quantization import quantize

    chosen, skipped, _ = quantize.select_layers(model, quantize.default_annotations(model), scheme)
    selected = {
        node.path: config for node, config, _ in chosen if _quantizes_something(node.layer, config)
    }
    decisions = []
    for node in layer_tree.walk_layers(model):
        cls = type(node.layer).__name__
        if node.path in selected:
            weights = _quantized_weights(node.layer, selected[node.path])
            decisions.append(targeting.LayerDecision(node.path, cls, True, weights))
        elif node.path in skipped:
            decisions.append(targeting.LayerDecision(node.path, cls, False, [], skipped[node.path]))
    return targeting.TargetReport(decisions, action="quantized")


def _structures(model, calibration_data, fraction):
    from keras_llmopt._src.llm import structure_inspection

    try:
        return structure_inspection.structure_summary(model, calibration_data, fraction)
    except (TypeError, ValueError) as error:
        return f"structures: none to prune ({error})"


def inspect_model(model, calibration_data=None, fraction=0.25):
    """Parameters, bytes by dtype, per-layer sparsity, per-transformation targets, structures.

    Args:
        model: A Keras model or the path of a ``.keras`` file (pruned ones included).
        calibration_data: Token ids to score heads, channels and blocks by their
            activations (``None``: by weight magnitude).
        fraction: The share of heads and MLP channels the structure report asks about.

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
    targets = {
        "pruning": targeting.select_layers(model, action="pruned")[0],
        "quantization": quantization_targets(model),
        "clustering": targeting.select_layers(model, action="clustered")[0],
    }
    return Inspection(
        name=model.name,
        parameters=parameters,
        bytes_by_dtype=dict(by_dtype),
        sparsity=sparsity_report_lib.sparsity_report(model),
        targets=targets,
        pruned=pruned,
        structures=None if pruned else _structures(model, calibration_data, fraction),
    )
