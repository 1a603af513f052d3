"""One save/load rule for every patched model (pruned, quantized, clustered, any mix).

A model whose layers carry :class:`~keras_llmopt._src.core.layer_state.LayerState`
states keeps its own class and layers, which its own config cannot describe. So
:func:`make_saveable` gives it a subclass of its class (one per original class,
same name and behaviour) whose ``get_config`` is the float model's config plus, per
patched layer, its path and each state's technique and ``record()``. That subclass
serializes under ``keras_llmopt>PatchedModel``; loading rebuilds the float model,
asks each state's technique (the registry) to re-create the state from its record,
and Keras then loads every variable (weights, masks, ranges, codebooks, optimizer)
into it as for any model. ``model.save``, ``keras.saving.load_model``,
``copy.deepcopy`` and pickling all go through this. ``model.save(path)`` of a patched
model is staged: Keras writes a temporary file beside ``path``, which replaces ``path``
only once complete, so a save that fails (an object Keras cannot serialize) leaves no
file behind, and a file already at ``path`` untouched.
"""

import contextlib
import os
import tempfile

import keras

from keras_llmopt._src.core import keras_compat, layer_state, layer_tree, registry

SAVED_NAME = "keras_llmopt>PatchedModel"
_FLOAT_CLASS_ATTR = "_llmopt_float_class"
_PATCHED_CLASSES = {}


def _model_layers(model):
    """``[(path, layer)]`` of the model's own layers (states left out)."""
    return [
        (node.path, node.layer)
        for node in layer_tree.walk_layers(model)
        if not isinstance(node.layer, layer_state.LayerState)
    ]


def float_class(model):
    """The class ``model`` had before it was patched (its own class if not patched).

    Example:
        >>> float_class(keras.Sequential()).__name__
        'Sequential'
    """
    return getattr(type(model), _FLOAT_CLASS_ATTR, type(model))


def is_patched(model):
    """Whether ``model`` carries the saveable patched class.

    Example:
        >>> is_patched(keras.Sequential())
        False
    """
    return float_class(model) is not type(model)


def _float_config(model):
    base = float_class(model)
    config = keras_compat.public_class_config(base, base.get_config(model))
    build_config = model.get_build_config()
    if build_config:
        config["build_config"] = build_config
    return config


def _layer_records(model):
    records = []
    for index, (path, layer) in enumerate(_model_layers(model)):
        states = layer_state.states_of(layer)
        if not states:
            continue
        entries = []
        for state in states:
            try:
                record = state.record()
            except Exception as error:
                raise ValueError(
                    f"Cannot save the {state.technique!r} state of layer '{path}' "
                    f"({type(state).__name__}): {error}."
                ) from error
            entries.append({"technique": state.technique, "record": record})
        records.append(
            {"path": path, "index": index, "class_name": type(layer).__name__, "states": entries}
        )
    return records


def _model_records(model):
    found = {}
    for technique in registry.techniques():
        if technique.model_record is not None:
            record = technique.model_record(model)
            if record is not None:
                found[technique.name] = record
    return found


def _get_config(self):
    return {
        "float_model": _float_config(self),
        "layers": _layer_records(self),
        "model": _model_records(self),
    }


def _staged(filepath, zipped):
    """The local ``.keras`` path a save can stage, or ``None`` (Keras writes it directly)."""
    if not isinstance(filepath, str | os.PathLike) or zipped is False:
        return None
    path = os.fspath(filepath)
    if not path.endswith(".keras") or "://" in path:
        return None
    return path


def _overwrite_confirmed(path):
    """Asks, as Keras does for ``overwrite=False``, whether to replace ``path``."""
    answer = input(f"[WARNING] {path} already exists - overwrite? [y/n]").strip().lower()
    while answer not in ("y", "n"):
        answer = input('Enter "y" (overwrite) or "n" (cancel).').strip().lower()
    return answer == "y"


def save_staged(model, filepath, overwrite=True, zipped=None, **kwargs):
    """``model.save`` through a temporary file: a failed save leaves no file behind.

    The float class's ``save`` writes ``.<name>.<random>.tmp.keras`` beside ``filepath``;
    only a complete file replaces ``filepath`` (an existing file is untouched until
    then). Paths Keras does not write as a local ``.keras`` zip (``.h5``, remote or
    unzipped) go to Keras as they are. Patched models' ``save`` is this function.

    Args:
        model: A ``keras.Model``.
        filepath: Where to save, as for ``keras.Model.save``.
        overwrite: Replace an existing file without asking.
        zipped: As for ``keras.Model.save``.
        **kwargs: Passed to ``keras.Model.save``.

    Example:
        >>> import os, tempfile
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> folder = tempfile.mkdtemp()
        >>> save_staged(m, os.path.join(folder, "m.keras"))
        >>> os.listdir(folder)
        ['m.keras']
    """
    base_save = float_class(model).save
    path = _staged(filepath, zipped)
    if path is None:
        return base_save(model, filepath, overwrite=overwrite, zipped=zipped, **kwargs)
    if os.path.exists(path) and not overwrite and not _overwrite_confirmed(path):
        return None
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp.keras", dir=folder
    )
    os.close(fd)
    try:
        base_save(model, temp, overwrite=True, zipped=zipped, **kwargs)
        os.chmod(temp, _file_mode(path))
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return None


def _file_mode(path):
    """The mode a new file gets (``0o666`` less the umask), or the existing file's."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _save(self, filepath, overwrite=True, zipped=None, **kwargs):
    return save_staged(self, filepath, overwrite=overwrite, zipped=zipped, **kwargs)


def _patched_class(base):
    cls = _PATCHED_CLASSES.get(base)
    if cls is None:
        cls = type(
            base.__name__,
            (base,),
            {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                "get_config": _get_config,
                "save": _save,
                _FLOAT_CLASS_ATTR: base,
            },
        )
        keras_compat.register_serialized_name(cls, SAVED_NAME)
        _PATCHED_CLASSES[base] = cls
    return cls


def make_saveable(model):
    """Gives a model with layer states a class that saves and loads them.

    Idempotent; a model without states gets its float class back.

    Args:
        model: A ``keras.Model`` patched in place.

    Returns:
        The same model.

    Example:
        >>> from keras_llmopt import sparsity
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> pruned = sparsity.prune_low_magnitude(m)
        >>> type(pruned).__name__, float_class(pruned).__name__, is_patched(pruned)
        ('Sequential', 'Sequential', True)
    """
    base = float_class(model)
    target = _patched_class(base) if layer_state.find_states(model) else base
    object.__setattr__(model, "__class__", target)
    return model


@contextlib.contextmanager
def as_float_class(model):
    """Context manager: ``model`` has its float class inside the block.

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
            f"Loading a patched model: layer '{record['path']}' ({record['class_name']}) "
            "was not found in the rebuilt model."
        )
    return layer


def rebuild(config):
    """The patched model described by a ``get_config`` dict (what loading calls).

    Raises:
        ValueError: A layer is missing from the rebuilt model, or a technique's
            record cannot be restored (the message names the layer and technique).
    """
    model = keras.saving.deserialize_keras_object(config["float_model"])
    layers = _model_layers(model)
    for record in config["layers"]:
        layer = _find_layer(layers, record)
        for entry in record["states"]:
            technique = registry.get_technique(entry["technique"])
            if technique.restore is None:
                raise ValueError(
                    f"Technique {technique.name!r} cannot restore saved states (no restore "
                    f"handler); layer '{record['path']}'."
                )
            state = technique.restore(layer, entry["record"], record["path"])
            if state is not None:
                layer_state.install(layer, state)
    for name, record in config.get("model", {}).items():
        technique = registry.get_technique(name)
        if technique.restore_model is not None:
            technique.restore_model(model, record)
    return make_saveable(model)


class _PatchedModelLoader:
    """What ``keras.saving.load_model`` finds under ``SAVED_NAME``."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return rebuild(config)


class _QuantizedModelLoader:
    """Files saved before the shared core, as ``keras_llmopt>QuantizedModel``.

    Their config held one quantization record per layer; it is translated to the
    core's format (technique ``"quantization"``) and rebuilt the same way.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        old = config["quantization"]
        layers = [
            {
                "path": r["path"],
                "index": r["index"],
                "class_name": r["class_name"],
                "states": [
                    {
                        "technique": "quantization",
                        "record": {"config": r["config"], "masked": r["masked"]},
                    }
                ],
            }
            for r in old["layers"]
        ]
        report = {
            "scheme": old.get("scheme") or "custom",
            "quantized": [r["path"] for r in old["layers"]],
            "skipped": dict(old.get("skipped", {})),
        }
        return rebuild(
            {
                "float_model": config["float_model"],
                "layers": layers,
                "model": {"quantization": report},
            }
        )


keras.saving.get_custom_objects()[SAVED_NAME] = _PatchedModelLoader
keras.saving.get_custom_objects()["keras_llmopt>QuantizedModel"] = _QuantizedModelLoader
