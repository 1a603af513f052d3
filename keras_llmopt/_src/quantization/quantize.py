"""Entry points: ``quantize_model``, ``quantize_annotate_*``, ``quantize_apply`` and friends.

tfmot's names and workflow for any Keras 3 model. The model passed in is never
modified: it is copied (a pruned model is first stripped, its zeros kept by
masks), and the copy's layers are quantized in place (see ``state.py``), which
works the same for functional, Sequential, subclassed and KerasHub models.
Integer inputs (token ids) are never fake-quantized: quantization starts at the
first float tensor a quantized layer produces.
"""

import contextlib
import dataclasses

import keras
from absl import logging

from keras_llmopt._src.core import keras_compat, layer_state, layer_tree, model_copy, targeting
from keras_llmopt._src.core import saving as core_saving
from keras_llmopt._src.core import strip as core_strip
from keras_llmopt._src.quantization import attention_prep, consumer_inputs
from keras_llmopt._src.quantization import configs as configs_lib
from keras_llmopt._src.quantization import schemes as schemes_lib
from keras_llmopt._src.quantization import state as state_lib

ANNOTATION_ATTR = "_llmopt_quantize_annotation"


@dataclasses.dataclass(frozen=True)
class _Annotation:
    config: object
    explicit: bool


@dataclasses.dataclass
class QuantizeReport:
    """What ``quantize_apply`` quantized and what it left in float, with reasons.

    The same targeting (``targets`` / ``ignore`` patterns) and the same questions as
    pruning's report: ``selected_paths`` and ``reason(path)``.

    Attributes:
        scheme: The scheme's name.
        quantized: Paths of the quantized layers.
        skipped: ``{path: reason}`` of layers with weights left in float.

    Example:
        >>> report = QuantizeReport("default_8bit", ["dense"], {"lm_head": "matched `ignore`"})
        >>> report.selected_paths, report.reason("lm_head")
        (['dense'], 'matched `ignore`')
    """

    scheme: str
    quantized: list
    skipped: dict

    @property
    def selected_paths(self):
        """Paths of the quantized layers (as in pruning's ``TargetReport``)."""
        return list(self.quantized)

    def reason(self, path):
        """Why ``path`` was skipped (``""`` when quantized); ``KeyError`` if unknown."""
        if path in self.quantized:
            return ""
        return self.skipped[path]

    def to_record(self):
        """Plain data (saved with the model)."""
        return {"scheme": self.scheme, "quantized": list(self.quantized), "skipped": self.skipped}

    @classmethod
    def from_record(cls, record):
        """The report saved by :meth:`to_record`."""
        return cls(record["scheme"], list(record["quantized"]), dict(record["skipped"]))

    def __str__(self):
        lines = [f"quantized {len(self.quantized)} layers ({self.scheme})"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped.items()]
        return "\n".join(lines)


def _own_weights(layer):
    return keras_compat.own_variables(layer)


def _check_model(model, what):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{what}` must be a keras.Model. Received: {what}={model!r} of type "
            f"{type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Call it on a batch (or build it) before "
            "quantizing."
        )


def _is_quantized(model):
    return bool(state_lib.states(model))


def _working_copy(model):
    """A plain copy: other techniques' states baked in (pruned zeros become masks later)."""
    if _is_quantized(model):
        raise ValueError(
            f"Model '{model.name}' is already quantized. Received: a model returned by "
            "quantize_model/quantize_apply; quantize the float model instead."
        )
    if layer_state.find_states(model):
        return core_strip.strip_techniques(model, None, "quantizing")
    if _has_pruning_wrappers(model):
        raise ValueError(
            f"Model '{model.name}' holds PruneLowMagnitude wrappers (layers wrapped by hand). "
            "Strip them first: keras_llmopt.sparsity.strip_pruning(model). Received: a "
            "model with wrapped layers"
        )
    return model_copy.copy_model(model, "quantizing", compiled=False)


def _has_pruning_wrappers(model):
    return any(
        type(node.layer).__name__ == "PruneLowMagnitude" for node in layer_tree.walk_layers(model)
    )


def quantize_annotate_layer(to_annotate, quantize_config=None):
    """Marks a layer to be quantized by :func:`quantize_apply` (tfmot name).

    Unlike tfmot no wrapper is returned: the layer itself is marked and returned,
    so it can be used to build a model as usual. Layers of other types than
    Dense, EinsumDense, Conv, Embedding, normalizations, adds and
    MultiHeadAttention need a ``quantize_config``.

    Args:
        to_annotate: A ``keras.layers.Layer``.
        quantize_config: A :class:`QuantizeConfig`, or ``None`` for the default
            config of the layer's type under the scheme given to ``quantize_apply``.

    Returns:
        The same layer.

    Example:
        >>> import keras
        >>> model = keras.Sequential([
        ...     keras.Input((8,)),
        ...     quantize_annotate_layer(keras.layers.Dense(4, name="d")),
        ...     keras.layers.Dense(2, name="e")])
        >>> quantize_apply(model).quantize_report.quantized
        ['d']
    """
    if not isinstance(to_annotate, keras.layers.Layer) or isinstance(to_annotate, keras.Model):
        raise TypeError(
            "`to_annotate` must be a keras.layers.Layer (use quantize_annotate_model for a "
            f"model). Received: to_annotate={to_annotate!r}"
        )
    if quantize_config is not None and not isinstance(quantize_config, configs_lib.QuantizeConfig):
        raise TypeError(
            "`quantize_config` must be a QuantizeConfig or None. "
            f"Received: quantize_config={quantize_config!r}"
        )
    object.__setattr__(to_annotate, ANNOTATION_ATTR, _Annotation(quantize_config, True))
    return to_annotate


def quantize_annotate_model(to_annotate):
    """Returns a copy of a model with every layer marked for :func:`quantize_apply`.

    Layers with weights but no known config are left in float by ``quantize_apply``
    and listed as skipped in its report (annotate them explicitly with a
    ``QuantizeConfig`` to quantize them).

    Args:
        to_annotate: A built ``keras.Model``; it is not modified.

    Returns:
        The annotated copy.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
        >>> q = quantize_apply(quantize_annotate_model(model))
        >>> q.quantize_report.quantized
        ['d']
    """
    _check_model(to_annotate, "to_annotate")
    work = _working_copy(to_annotate)
    for node in layer_tree.walk_layers(work):
        if ANNOTATION_ATTR not in vars(node.layer):
            object.__setattr__(node.layer, ANNOTATION_ATTR, _Annotation(None, False))
    return work


def _annotations(model):
    return {
        node.path: vars(node.layer)[ANNOTATION_ATTR]
        for node in layer_tree.walk_layers(model)
        if ANNOTATION_ATTR in vars(node.layer)
    }


def default_annotations(model, annotated=None):
    """The annotations ``quantize_model`` uses: every layer, explicit annotations kept.

    Args:
        model: The model whose layers are annotated (paths from its layer tree).
        annotated: The model whose own :func:`quantize_annotate_layer` marks are kept
            (default: ``model``).

    Returns:
        ``{path: annotation}`` for :func:`select_layers`.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
        >>> sorted(default_annotations(model))
        ['d', 'input_layer...']
    """
    annotations = {node.path: _Annotation(None, False) for node in layer_tree.walk_layers(model)}
    for path, annotation in _annotations(model if annotated is None else annotated).items():
        if path in annotations:
            annotations[path] = annotation
    return annotations


def select_layers(work, annotations, scheme, ignore=None, targets=None):
    """The per-layer decision of ``quantize_apply`` / ``quantize_model``, nothing installed.

    The one selection code: quantization itself and ``keras-llmopt inspect`` both ask it.
    It includes the placement plan (``consumer_inputs.plan``, one probing forward pass):
    input ranges where a matmul's producer leaves its input in float, and the layers
    with no config of their own that compute matmuls inline (KerasHub attention).

    Args:
        work: The model (its layer tree is read, nothing is changed).
        annotations: ``{path: annotation}`` of the annotated layers (see
            :func:`default_annotations`).
        scheme: A :class:`QuantizeScheme` (or its name).
        ignore: Layer path patterns left in float.
        targets: Layer path patterns to quantize (``None``: every annotated layer).

    Returns:
        ``(chosen, skipped, used_targets)``: ``[(node, config, defaulted)]`` of the layers
        to quantize, ``{path: reason}`` of layers with weights left in float, and the
        ``targets`` patterns that matched a layer.

    Raises:
        ValueError: An explicitly annotated layer has weights and no known config.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d"),
        ...                           keras.layers.Dense(2, name="e")])
        >>> chosen, skipped, _ = select_layers(
        ...     model, default_annotations(model), "default_8bit", ignore="e")
        >>> [node.path for node, _, _ in chosen], skipped
        (['d'], {'e': "ignored by pattern 'e' (matched `ignore`)"})
    """
    scheme = schemes_lib.get_scheme(scheme)
    ignore = targeting.as_patterns(ignore, "ignore")
    targets = targeting.as_patterns(targets, "targets")
    walked = list(layer_tree.walk_layers(work))
    nodes = [node for node in walked if node.path in annotations]
    symmetric = attention_prep.attention_value_operands(node.layer for node in walked)
    chosen, skipped, used_targets = [], {}, set()
    for node in nodes:
        annotation = annotations[node.path]
        layer = node.layer
        if isinstance(layer, layer_state.LayerState):
            continue
        matched_target = targeting.first_match(node.path, targets)
        used_targets.add(matched_target)
        if targets and not matched_target and not annotation.explicit:
            if _own_weights(layer):
                skipped[node.path] = "not matched by `targets`"
            continue
        matched_ignore = targeting.first_match(node.path, ignore)
        if matched_ignore:
            if _own_weights(layer):
                skipped[node.path] = f"ignored by pattern {matched_ignore!r} (matched `ignore`)"
            continue
        config = annotation.config
        if config is None:
            config = configs_lib.default_config(layer, scheme)
            if id(layer) in symmetric and isinstance(config, configs_lib.WeightedLayerConfig):
                config.symmetric_output = True
        if config is None:
            if _own_weights(layer) and not configs_lib.has_default(layer):
                if annotation.explicit:
                    raise ValueError(
                        f"Layer '{node.path}' ({type(layer).__name__}) has weights but no "
                        "known quantization config. Pass one: quantize_annotate_layer(layer, "
                        "quantize_config=MyQuantizeConfig()), a QuantizeConfig subclass. "
                        "Received: quantize_config=None"
                    )
                skipped[node.path] = (
                    f"no QuantizeConfig for {type(layer).__name__} (left in float; annotate "
                    "it with a quantize_config to quantize it)"
                )
            continue
        if not layer.built:
            skipped[node.path] = "layer is not built"
            continue
        chosen.append((node, config, annotation.config is None))

    def plannable(path):  # a layer with no config of its own, quantized for its inline ops
        if path not in annotations or targeting.first_match(path, ignore):
            return False
        return not targets or bool(targeting.first_match(path, targets))

    planned = consumer_inputs.plan(work, chosen, scheme, plannable)
    chosen += [(node, config, True) for node, config in planned]
    order = {node.path: i for i, node in enumerate(walked)}
    chosen.sort(key=lambda item: order[item[0].path])
    return chosen, skipped, used_targets


def _apply(work, annotations, scheme, preserve_sparsity, ignore, targets=None):
    ignore = targeting.as_patterns(ignore, "ignore")
    targets = targeting.as_patterns(targets, "targets")
    nodes = [node for node in layer_tree.walk_layers(work) if node.path in annotations]
    chosen, skipped, used_targets = select_layers(work, annotations, scheme, ignore, targets)
    paths = [n.path for n in nodes if _own_weights(n.layer)]
    targeting.check_targets_used(targets, used_targets, work.name, paths)
    attention_prep.fold_query_scales([(node.layer, config, d) for node, config, d in chosen])
    quantized = []
    for node, config, _ in chosen:
        state = state_lib.install(node.layer, config, node.path, preserve_sparsity)
        if not state.is_empty:
            quantized.append(node.path)
    return QuantizeReport(scheme.name, quantized, skipped)


def _finish(work, report):
    if not report.quantized:
        raise ValueError(f"Nothing to quantize in model '{work.name}'.\n{report}")
    object.__setattr__(work, "quantize_report", report)
    core_saving.make_saveable(work)
    logging.info("quantize: %s", report)
    return work


def quantize_apply(model, scheme="default_8bit", preserve_sparsity=True, ignore=None, targets=None):
    """Quantizes the annotated layers of a model for quantization-aware training.

    Args:
        model: A built model with layers marked by :func:`quantize_annotate_layer`
            or :func:`quantize_annotate_model`; it is not modified.
        scheme: ``"default_8bit"`` (int8 per-channel symmetric weights, int8
            asymmetric activations with moving min/max ranges),
            ``"8bit_weights_16bit_activations"`` (TFLite's 16x8), ``"4bit_weights"``
            (weight-only int4 per channel), ``"4bit_weights_group32"`` /
            ``"4bit_weights_group128"`` (group-wise), or a :class:`QuantizeScheme`.
        preserve_sparsity: Weights with exact zeros (pruned models) keep them:
            a fixed mask multiplies the weight before fake quantization.
        ignore: Layer path patterns to leave in float (glob or ``"re:<regex>"``, as
            for pruning).
        targets: Layer path patterns to quantize (default: every annotated layer);
            a pattern that matches no layer is an error.

    Returns:
        A new model; ``model.quantize_report`` lists what was quantized and skipped.

    Raises:
        ValueError: Unknown scheme, no annotated layer, or an explicitly annotated
            layer with weights and no known config (the layer path is named).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
        >>> q = quantize_apply(quantize_annotate_model(model), scheme="4bit_weights")
        >>> q.quantize_report.scheme
        '4bit_weights'
    """
    scheme = schemes_lib.get_scheme(scheme)
    _check_model(model, "model")
    annotations = _annotations(model)
    if not annotations:
        raise ValueError(
            f"Model '{model.name}' has no annotated layers. Annotate it with "
            "quantize_annotate_model(model) / quantize_annotate_layer(layer), or call "
            "quantize_model(model)."
        )
    work = _working_copy(model)
    return _finish(work, _apply(work, annotations, scheme, preserve_sparsity, ignore, targets))


def quantize_model(
    to_quantize, scheme="default_8bit", preserve_sparsity=True, ignore=None, targets=None
):
    """Quantization-aware copy of any Keras 3 model (tfmot's ``quantize_model``).

    ``quantize_annotate_model`` then ``quantize_apply``: Dense, EinsumDense (the
    attention q/k/v/o projections), Conv, Embedding, the attention score and value
    matmuls, residual adds and normalizations get fake quantization with
    straight-through gradients; activation ranges are learned while you ``fit``
    (or set post-training by :func:`calibrate`). Export with
    ``keras_llmopt.export.to_tflite(model, path, quantization="int8")`` (or
    ``"int16x8"`` for the 16-bit-activation scheme). The result keeps the model's
    class and saves with ``model.save(...)``; ``keras.models.load_model`` (inside
    :func:`quantize_scope` for custom configs) gives it back quantization-aware, with
    its learned ranges and masks.

    Args:
        to_quantize: A built ``keras.Model`` (functional, Sequential, subclassed,
            KerasHub), possibly pruned with ``keras_llmopt.sparsity``; not modified.
        scheme: See :func:`quantize_apply`.
        preserve_sparsity: Keep exact zeros of pruned weights (PQAT).
        ignore: Layer path patterns to leave in float (glob or ``"re:<regex>"``).
        targets: Layer path patterns to quantize (default: every layer with a
            known config); the same patterns as ``prune_low_magnitude``.

    Returns:
        The quantization-aware model, with a ``quantize_report`` attribute.

    Example:
        >>> from keras_llmopt import reference
        >>> q = quantize_model(reference.build_gpt("tiny"))
        >>> "block_0_attention/query" in q.quantize_report.quantized
        True
    """
    scheme = schemes_lib.get_scheme(scheme)
    _check_model(to_quantize, "to_quantize")
    work = _working_copy(to_quantize)
    annotations = default_annotations(work, to_quantize)
    return _finish(work, _apply(work, annotations, scheme, preserve_sparsity, ignore, targets))


@contextlib.contextmanager
def quantize_scope(*args):
    """Scope in which quantization classes (and yours) deserialize (tfmot name).

    Load a saved quantization-aware model inside it; pass the custom
    ``QuantizeConfig`` classes (and layers) its file names.

    Args:
        *args: Dicts of ``{name: class}`` for custom ``QuantizeConfig``s or layers.

    Example:
        >>> import keras
        >>> q = quantize_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
        >>> q.save("qat.keras")
        >>> with quantize_scope({"MyConfig": configs_lib.QuantizeConfig}):
        ...     loaded = keras.models.load_model("qat.keras")
        >>> len(loaded.quantize_report.quantized)
        1
    """
    from keras_llmopt._src.quantization import layer_quantizers as lq

    objects = {
        "QuantizeState": state_lib.QuantizeState,
        "QuantizeConfig": configs_lib.QuantizeConfig,
        "WeightQuantizer": lq.WeightQuantizer,
        "ActivationQuantizer": lq.ActivationQuantizer,
        "FixedRangeQuantizer": lq.FixedRangeQuantizer,
    }
    for arg in args:
        if not isinstance(arg, dict):
            raise TypeError(f"quantize_scope takes dicts of objects. Received: {arg!r}")
        objects.update(arg)
    with keras.saving.custom_object_scope(objects):
        yield


def strip_quantization(model):
    """A plain float model whose weights are the fake-quantized (dequantized) values.

    Activation ranges are dropped. Useful to hand a model to code that must not
    depend on keras_llmopt, or to compare weight-only quantization in float.

    Args:
        model: A model from :func:`quantize_model` / :func:`quantize_apply`.

    Returns:
        A new plain model (the input is not modified).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
        >>> plain = strip_quantization(quantize_model(model, scheme="4bit_weights"))
        >>> [type(layer).__name__ for layer in plain.layers]
        ['Dense']
    """
    found = state_lib.states(model) if isinstance(model, keras.Model) else []
    if not found:
        raise ValueError(
            "`model` is not quantization-aware (no quantized layers). Received: "
            f"model={getattr(model, 'name', model)!r}"
        )
    return core_strip.strip_techniques(model, state_lib.TECHNIQUE, "stripping quantization")
