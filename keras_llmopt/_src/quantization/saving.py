"""Quantization-aware models as ``.keras`` files (saved with ``model.save``).

A model from ``quantize_model`` keeps its own class and layers; its layers were
quantized in place (``state.py``), which its own config cannot describe. So the
model's class is swapped for a subclass (one per original class, same name and
behaviour) whose ``get_config`` returns the float model's config plus, per quantized
layer, its path, its ``QuantizeConfig`` and which weights carry a sparsity mask.
That subclass serializes under the registered name ``keras_llmopt>QuantizedModel``,
whose loader rebuilds the float model, quantizes the same layers with the same
configs and returns it; Keras then loads every variable (weights, activation ranges,
masks) into it as for any model. ``model.save``, ``keras.models.load_model``,
``copy.deepcopy`` and pickling all go through this.

Custom ``QuantizeConfig`` classes must be registered
(``keras.saving.register_keras_serializable``) or passed to ``quantize_scope`` when
loading, as in tfmot.
"""

import contextlib

import keras

from keras_llmopt._src.core import keras_compat, layer_tree
from keras_llmopt._src.quantization import state as state_lib

SAVED_NAME = "keras_llmopt>QuantizedModel"
QUANTIZATION_ATTR = "_llmopt_quantization"
_FLOAT_CLASS_ATTR = "_llmopt_float_class"
_QUANTIZED_CLASSES = {}


def _model_layers(model):
    """``[(path, layer)]`` of the model's own layers (quantization states left out)."""
    return [
        (node.path, node.layer)
        for node in layer_tree.walk_layers(model)
        if not isinstance(node.layer, state_lib.QuantizeState)
    ]


def float_class(model):
    """The class ``model`` had before quantization (its own class if not quantized)."""
    return getattr(type(model), _FLOAT_CLASS_ATTR, type(model))


def _float_config(model):
    base = float_class(model)
    inner = base.get_config(model)
    config = keras_compat.public_class_config(base, inner)
    build_config = model.get_build_config()
    if build_config:
        config["build_config"] = build_config
    return config


def _layer_records(model):
    records = []
    for index, (path, layer) in enumerate(_model_layers(model)):
        state = vars(layer).get(state_lib.STATE_ATTR)
        if not isinstance(state, state_lib.QuantizeState):
            continue
        try:
            config = keras.saving.serialize_keras_object(state.config)
        except Exception as error:
            raise ValueError(
                f"Cannot save the quantization config of layer '{path}' "
                f"({type(state.config).__name__}): {error}. A custom QuantizeConfig needs "
                "`get_config()` returning its constructor arguments."
            ) from error
        records.append(
            {
                "path": path,
                "index": index,
                "class_name": type(layer).__name__,
                "config": config,
                "masked": [qw.name for qw in state.weights_q if qw.mask is not None],
            }
        )
    return records


def _get_config(self):
    report = getattr(self, "quantize_report", None)
    return {
        "float_model": _float_config(self),
        "quantization": {
            "scheme": getattr(report, "scheme", None),
            "skipped": dict(getattr(report, "skipped", {})),
            "layers": _layer_records(self),
        },
    }


def _quantized_class(base):
    cls = _QUANTIZED_CLASSES.get(base)
    if cls is None:
        cls = type(
            base.__name__,
            (base,),
            {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                "get_config": _get_config,
                _FLOAT_CLASS_ATTR: base,
            },
        )
        keras_compat.register_serialized_name(cls, SAVED_NAME)
        _QUANTIZED_CLASSES[base] = cls
    return cls


def make_saveable(model):
    """Gives a model quantized in place a class that saves and loads its quantization.

    Args:
        model: A model whose layers carry quantization states (``state.install``).

    Returns:
        The same model.

    Example:
        >>> from keras_llmopt._src.quantization import quantize
        >>> q = quantize.quantize_model(keras.Sequential([keras.Input((4,)),
        ...                                               keras.layers.Dense(2)]))
        >>> type(q).__name__, float_class(q).__name__
        ('Sequential', 'Sequential')
    """
    base = float_class(model)
    object.__setattr__(model, "__class__", _quantized_class(base))
    return model


@contextlib.contextmanager
def as_float_class(model):
    """Context manager: ``model`` has its float class inside (for copies that strip it).

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> with as_float_class(m):
        ...     type(m).__name__
        'Sequential'
    """
    current = type(model)
    object.__setattr__(model, "__class__", float_class(model))
    try:
        yield model
    finally:
        object.__setattr__(model, "__class__", current)


def _find_layer(layers, record):
    by_path = dict(layers)
    layer = by_path.get(record["path"])
    if layer is None and record["index"] < len(layers):
        # Auto-generated names (a subclassed model's unnamed sublayers) depend on the
        # process; the walk order does not.
        layer = layers[record["index"]][1]
    if layer is None or type(layer).__name__ != record["class_name"]:
        raise ValueError(
            f"Loading a quantized model: layer '{record['path']}' "
            f"({record['class_name']}) was not found in the rebuilt float model."
        )
    return layer


def rebuild(config):
    """The quantization-aware model described by ``_get_config``'s dict (loading)."""
    from keras_llmopt._src.quantization import quantize

    model = keras.saving.deserialize_keras_object(config["float_model"])
    quantization = config["quantization"]
    layers = _model_layers(model)
    quantized = []
    for record in quantization["layers"]:
        layer = _find_layer(layers, record)
        try:
            layer_config = keras.saving.deserialize_keras_object(record["config"])
        except Exception as error:
            raise ValueError(
                f"Loading a quantized model: the QuantizeConfig of layer '{record['path']}' "
                f"could not be rebuilt ({error}). Load inside "
                "`keras_llmopt.quantization.quantize_scope({'MyConfig': MyConfig})` or "
                "register the class with keras.saving.register_keras_serializable()."
            ) from error
        state_lib.install(layer, layer_config, record["path"], masked=set(record["masked"]))
        quantized.append(record["path"])
    report = quantize.QuantizeReport(
        quantization["scheme"] or "custom", quantized, dict(quantization["skipped"])
    )
    object.__setattr__(model, "quantize_report", report)
    return make_saveable(model)


class _QuantizedModelLoader:
    """What ``keras.models.load_model`` finds under ``SAVED_NAME``."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return rebuild(config)


keras.saving.get_custom_objects()[SAVED_NAME] = _QuantizedModelLoader
