"""Recipes: an ordered list of optimisation stages, parsed safely and validated up front.

A recipe is YAML (read with ``yaml.safe_load``) or JSON::

    name: prune50_int8            # optional
    description: ...              # optional
    sequence_length: 128          # optional: for models that do not declare one
    stages:
      - prune: {final_sparsity: 0.5, steps: 300}
      - strip: {}
      - export: {format: tflite, quantization: dynamic_int8, sparse: true}

Each stage is a one-key mapping ``{stage name: {key: value}}`` (a bare stage name, such
as ``- strip``, means no arguments). Every stage, key, type and range is checked before
anything trains; an error names the stage's index and name, the key, the value
received and what is accepted. ``STAGE_SCHEMAS`` below is the reference of every key.
``sequence_length`` is the length the recipe trains, calibrates, evaluates and exports
at, for a model whose inputs do not fix it (a KerasHub Llama or Gemma ``CausalLM``);
``run_recipe(sequence_length=...)`` and ``--sequence_length`` override it.
"""

import dataclasses
import json
import os

from keras_llmopt._src.core import registry

# Each key: (kind, default, constraint). kinds: "int", "float", "bool", "str", "choice",
# "patterns" (a glob/"re:" string or a list of them), "pair" (two positive ints).
EXPORT_FORMATS = ("tflite", "onnx", "saved_model")
TFLITE_QUANTIZATION = ("none", "float16", "dynamic_int8", "int8", "int16x8", "int4")

# The pipeline's own stages; technique stages (prune, quantize, cluster, and any
# registered technique's) come from the technique registry.
BUILTIN_STAGE_SCHEMAS = {
    # Bakes the states of techniques that are stripped before export (pruning masks,
    # codebooks, ...) into plain weights; quantization-aware layers export as they are.
    "strip": {},
    # Validation bits per byte of the current model, recorded in the summary.
    "evaluate": {"windows": ("int", 64, (1, None))},
    # A verified artifact of the current model, written into the output folder.
    "export": {
        "format": ("choice", "tflite", EXPORT_FORMATS),
        "quantization": ("choice", "none", TFLITE_QUANTIZATION),
        "sparse": ("bool", False, None),
        "name": ("str", None, None),
        "verify": ("bool", True, None),
        "calibration_windows": ("int", 64, (1, None)),
        "verify_windows": ("int", 16, (1, None)),
    },
}


def _stage_schemas():
    found = {t.stage: dict(t.stage_schema) for t in registry.techniques() if t.stage}
    return {**found, **BUILTIN_STAGE_SCHEMAS}


# Every stage's schema: the built-ins plus each registered technique's, read live.
STAGE_SCHEMAS = registry.LiveMapping(_stage_schemas)

_TOP_LEVEL_KEYS = ("name", "description", "sequence_length", "stages")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One validated stage of a recipe.

    Attributes:
        index: Position in the recipe (0-based).
        name: Stage name, a key of ``STAGE_SCHEMAS``.
        params: Every key of the stage's schema, defaults filled in.

    Example:
        >>> Stage(0, "strip", {}).label
        'stage 0 (strip)'
    """

    index: int
    name: str
    params: dict

    @property
    def label(self):
        """``"stage <index> (<name>)"``, used in messages."""
        return f"stage {self.index} ({self.name})"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe: a name, its ordered stages and, optionally, a sequence length.

    Example:
        >>> recipe = parse_recipe({"stages": [{"prune": {"final_sparsity": 0.5}}]})
        >>> [s.name for s in recipe.stages]
        ['prune']
    """

    name: str
    description: str
    stages: tuple
    sequence_length: int | None = None

    def to_dict(self):
        """The recipe as plain data, defaults filled in (round-trips through parse).

        Example:
            >>> parse_recipe(recipe.to_dict()) == recipe
            True
        """
        data = {"name": self.name, "description": self.description}
        if self.sequence_length is not None:
            data["sequence_length"] = self.sequence_length
        data["stages"] = [{s.name: dict(s.params)} for s in self.stages]
        return data


def _where(index, name, key=None):
    where = f"Recipe stage {index} ({name})"
    return f"{where}, key `{key}`" if key else where


def _check_number(kind, value, bounds, where, key):
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise TypeError(f"{where}: expected an integer. Received: {key}={value!r}")
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise TypeError(f"{where}: expected a number. Received: {key}={value!r}")
        value = float(value)
    low, high = bounds[0], bounds[1]
    style = bounds[2] if len(bounds) > 2 else "closed"
    too_low = low is not None and (value <= low if style in ("open", "left_open") else value < low)
    too_high = high is not None and (
        value >= high if style in ("open", "right_open") else value > high
    )
    if too_low or too_high:
        left = "(" if style in ("open", "left_open") else "["
        right = ")" if style in ("open", "right_open") else "]"
        accepted = f"{left}{low if low is not None else '-inf'}, "
        accepted += f"{high if high is not None else 'inf'}{right}"
        raise ValueError(f"{where}: out of range. Received: {key}={value!r}; accepted: {accepted}")
    return value


def _check_value(kind, value, constraint, where, key):
    if value is None:
        return None
    if kind in ("int", "float"):
        return _check_number(kind, value, constraint, where, key)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false. Received: {key}={value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise TypeError(f"{where}: expected a non-empty string. Received: {key}={value!r}")
        return value
    if kind == "choice":
        if value not in constraint:
            raise ValueError(
                f"{where}: unknown value. Received: {key}={value!r}; accepted: {list(constraint)}"
            )
        return value
    if kind == "patterns":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(p, str) and p for p in items):
            raise TypeError(
                f"{where}: expected a layer path pattern or a list of them (glob or "
                f"'re:<regex>'). Received: {key}={value!r}"
            )
        return list(items)
    if kind == "pair":
        if (
            not isinstance(value, list | tuple)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise ValueError(
                f"{where}: expected two positive integers, e.g. [2, 4]. Received: {key}={value!r}"
            )
        return [int(v) for v in value]
    raise AssertionError(kind)  # unreachable: schema kinds are fixed above


def _parse_stage(index, entry):
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(
            f"Recipe stage {index}: each stage must be a mapping with exactly one stage name, "
            f"e.g. {{'prune': {{'final_sparsity': 0.5}}}}. Received: {entry!r}; accepted "
            f"stage names: {sorted(STAGE_SCHEMAS)}"
        )
    ((name, params),) = entry.items()
    if name not in STAGE_SCHEMAS:
        raise ValueError(
            f"Recipe stage {index}: unknown stage. Received: {name!r}; accepted: "
            f"{sorted(STAGE_SCHEMAS)}"
        )
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(
            f"{_where(index, name)}: the arguments must be a mapping of key: value. "
            f"Received: {params!r}"
        )
    schema = STAGE_SCHEMAS[name]
    unknown = sorted(str(k) for k in params if k not in schema)
    if unknown:
        raise ValueError(
            f"{_where(index, name, unknown[0])}: unknown key. Received: {unknown}; accepted: "
            f"{sorted(schema) or 'no keys'}"
        )
    resolved = {}
    for key, (kind, default, constraint) in schema.items():
        value = params.get(key, default)
        resolved[key] = _check_value(kind, value, constraint, _where(index, name, key), key)
    _check_stage(index, name, resolved)
    return Stage(index, name, resolved)


def _check_stage(index, name, p):
    technique = registry.technique_for_stage(name)
    if technique is not None and technique.check_stage is not None:
        technique.check_stage(p, lambda key: _where(index, name, key))
    if name == "export":
        if p["format"] != "tflite" and (p["quantization"] != "none" or p["sparse"]):
            raise ValueError(
                f"{_where(index, name, 'quantization')}: quantization and sparse apply to "
                f"format 'tflite' only. Received: format={p['format']!r}, "
                f"quantization={p['quantization']!r}, sparse={p['sparse']}"
            )
        if p["name"] is not None and (os.sep in p["name"] or p["name"] in (".", "..")):
            raise ValueError(
                f"{_where(index, name, 'name')}: must be a file name inside the output folder, "
                f"not a path. Received: name={p['name']!r}"
            )


def _check_order(stages):
    seen = {}
    exports_as_is = None  # (stage index, stage name, modes) of the last as-is technique
    for stage in stages:
        technique = registry.technique_for_stage(stage.name)
        if technique is not None:
            for later in technique.must_precede:
                if later in seen:
                    raise ValueError(
                        f"Recipe {stage.label}: {stage.name} must come before {later} (stage "
                        f"{seen[later]})."
                    )
            if stage.name in seen:
                raise ValueError(
                    f"Recipe {stage.label}: {stage.name} appears twice (first at stage "
                    f"{seen[stage.name]}); accepted: each technique stage at most once."
                )
            if technique.export_modes is not None:
                exports_as_is = (stage.index, stage.name, technique.export_modes)
        if stage.name == "export" and exports_as_is is not None:
            where, what, modes = exports_as_is
            p = stage.params
            if p["format"] != "tflite" or p["quantization"] not in modes:
                accepted = " or ".join(repr(m) for m in modes)
                raise ValueError(
                    f"Recipe {stage.label}, key `quantization`: after {what} (stage {where}) "
                    "the model exports as it is, as an integer TFLite model. "
                    f"Received: format={p['format']!r}, quantization={p['quantization']!r}; "
                    f"accepted: format 'tflite' with quantization {accepted}"
                )
        seen.setdefault(stage.name, stage.index)
    names = [s.name for s in stages]
    exports = [s for s in stages if s.name == "export"]
    stems = {}
    for s in exports:
        stem = export_stem(s)
        if stem in stems:
            raise ValueError(
                f"Recipe {s.label}, key `name`: two exports write {stem!r} (also stage "
                f"{stems[stem]}); give one of them a different name."
            )
        stems[stem] = s.index
    if not names:
        raise ValueError("Recipe: `stages` is empty; accepted: a list of at least one stage.")


def export_stem(stage):
    """The file name (without folder) an export stage writes.

    Example:
        >>> export_stem(Stage(3, "export", {"name": None, "format": "tflite",
        ...     "quantization": "int8", "sparse": False}))
        'stage3_int8.tflite'
    """
    p = stage.params
    ext = {"tflite": ".tflite", "onnx": ".onnx", "saved_model": ""}[p["format"]]
    if p["name"]:
        stem = p["name"]
        return stem if stem.endswith(ext) or not ext else stem + ext
    what = p["quantization"] if p["format"] == "tflite" else p["format"]
    what = "fp32" if what == "none" else what
    sparse = "_sparse" if p["sparse"] else ""
    return f"stage{stage.index}_{what}{sparse}{ext}"


def parse_recipe(data):
    """Validates recipe data (a dict, e.g. from YAML/JSON) into a :class:`Recipe`.

    Args:
        data: ``{"name": ..., "description": ..., "sequence_length": ..., "stages": [...]}``
            (only ``stages`` is required) or just the list of stages.

    Returns:
        A :class:`Recipe` with defaults filled in.

    Raises:
        ValueError: Unknown stage or key, value out of range, bad order; the message
            names the stage index, stage name and key, and what is accepted.
        TypeError: A value of the wrong type (same naming).

    Example:
        >>> recipe = parse_recipe({"stages": [{"prune": {"final_sparsity": 0.5}},
        ...                                   "strip", {"export": {"format": "onnx"}}]})
        >>> recipe.stages[0].params["steps"]
        200
    """
    if isinstance(data, list):
        data = {"stages": data}
    if not isinstance(data, dict):
        raise TypeError(
            "Recipe: expected a mapping with a `stages` list (or the list itself). "
            f"Received: {type(data).__name__}"
        )
    unknown = sorted(str(k) for k in data if k not in _TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(
            f"Recipe: unknown top-level key. Received: {unknown}; accepted: {list(_TOP_LEVEL_KEYS)}"
        )
    stages = data.get("stages")
    if not isinstance(stages, list):
        raise ValueError(
            f"Recipe: `stages` must be a list of stages. Received: stages={stages!r}; accepted "
            f"stage names: {sorted(STAGE_SCHEMAS)}"
        )
    for key in ("name", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise TypeError(f"Recipe: `{key}` must be a string. Received: {key}={data[key]!r}")
    length = data.get("sequence_length")
    bad = not isinstance(length, int) or isinstance(length, bool) or length < 1
    if length is not None and bad:
        raise ValueError(
            "Recipe: `sequence_length` must be a positive integer (or left out to read it "
            f"from the model). Received: sequence_length={length!r}"
        )
    parsed = tuple(_parse_stage(i, entry) for i, entry in enumerate(stages))
    _check_order(parsed)
    return Recipe(data.get("name") or "recipe", data.get("description") or "", parsed, length)


def load_recipe(path):
    """Reads and validates a recipe file (``.yaml``/``.yml`` or ``.json``).

    YAML is read with ``yaml.safe_load`` (no Python objects are built from the file).

    Args:
        path: The recipe file.

    Returns:
        A :class:`Recipe`; its name defaults to the file's stem.

    Example:
        >>> recipe = load_recipe("examples/recipes/prune50_int8.yaml")
        >>> [s.name for s in recipe.stages]
        ['evaluate', 'prune', 'strip', 'evaluate', 'export', 'export', 'export']
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"Recipe: `path` must be a file path. Received: path={path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recipe: no such file. Received: path={path!r}")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Recipe {path!r}: invalid JSON: {error}") from None
    elif path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"Recipe {path!r}: invalid YAML: {error}") from None
    else:
        raise ValueError(
            f"Recipe: unknown file type. Received: path={path!r}; accepted: .yaml, .yml, .json"
        )
    recipe = parse_recipe(data)
    if recipe.name == "recipe":
        stem = os.path.splitext(os.path.basename(path))[0]
        recipe = dataclasses.replace(recipe, name=stem)
    return recipe
