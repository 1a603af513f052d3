"""The technique registry: what a technique is, and where recipes, the CLI and benchmark find it.

A technique is a small serializable config (the user-facing settings), a
:class:`~keras_llmopt._src.core.layer_state.LayerState` subclass (what it installs
on a layer) and handlers: how to re-create a state when a saved model loads, how
to run it as a recipe stage, what an export of a model carrying it may do, and
optional benchmark variants. Registering a :class:`Technique` is all it takes for
``keras_llmopt.pipeline`` recipes, ``keras-llmopt optimize`` and the benchmark to
offer it: none of them name a technique.

Techniques from outside the package register the same way, from a module the user
imports, names with ``--plugins=`` on the command line, or declares as an entry
point in the ``keras_llmopt.techniques`` group.
"""

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping

ENTRY_POINT_GROUP = "keras_llmopt.techniques"

# Built-in technique modules, imported on first use of the registry (by name, so this
# low-level module imports none of them).
BUILTIN_MODULES = (
    "keras_llmopt._src.sparsity.technique",
    "keras_llmopt._src.clustering.technique",
    "keras_llmopt._src.quantization.technique",
    "keras_llmopt._src.llm.technique",
    "keras_llmopt._src.llm.structural_technique",
)

# Listing order of the built-ins, whatever order their modules were imported in.
_BUILTIN_ORDER = ("pruning", "clustering", "quantization", "weight_grid", "structural")
_TECHNIQUES: dict = {}

# Stage keys most techniques share (a stage schema may spread them in).
FINETUNE_SCHEMA = {
    "steps": ("int", 200, (0, None)),
    "learning_rate": ("float", 5e-4, (0.0, None, "open")),
    "batch_size": ("int", 16, (1, None)),
}
TARGETING_SCHEMA = {
    "targets": ("patterns", None, None),
    "ignore": ("patterns", None, None),
}
_LOADED = {"builtins": False, "entry_points": False}


@dataclasses.dataclass(frozen=True)
class Technique:
    """A registered technique and its handlers.

    Attributes:
        name: Registry name; also the ``technique`` of its layer states.
        state_class: The :class:`LayerState` subclass it installs (``None`` for a
            technique that only rewrites a model).
        restore: ``fn(layer, record, path) -> LayerState``: re-creates a state from
            its ``record()`` when a saved model loads (variables are loaded after).
        stage: Recipe stage name (``None``: not a recipe stage).
        stage_schema: ``{key: (kind, default, constraint)}`` of the stage's
            arguments (kinds: int, float, bool, str, choice, patterns, pair).
        run_stage: ``fn(model, params, context) -> model`` running the stage on a
            copy; ``context`` offers ``train(model, params, callbacks=None)``,
            ``distill(student, teacher, params)``,
            ``calibration_data(count)`` and ``label``.
        check_stage: Optional ``fn(params, where)`` raising on bad combinations.
        must_precede: Stage names that may not come before this stage.
        export_modes: TFLite modes a model carrying this technique exports to as it
            is (``None``: it is stripped before export, any mode).
        restore_model: Optional ``fn(model, record)`` re-attaching model-level data
            (a report) when loading; ``model_record(model)`` gives that record.
        model_record: Optional ``fn(model) -> dict`` saved with the model.
        variants: ``{benchmark variant name: fn(benchmark_context) -> Built}``.
        description: One line for listings.

    Example:
        >>> Technique(name="noop", state_class=None).stage is None
        True
    """

    name: str
    state_class: type | None = None
    restore: Callable | None = None
    stage: str | None = None
    stage_schema: Mapping = dataclasses.field(default_factory=dict)
    run_stage: Callable | None = None
    check_stage: Callable | None = None
    must_precede: tuple = ()
    export_modes: tuple | None = None
    restore_model: Callable | None = None
    model_record: Callable | None = None
    variants: Mapping = dataclasses.field(default_factory=dict)
    description: str = ""


def report_handlers(attr, report_class):
    """``{"model_record", "restore_model"}`` handlers keeping a model's report attribute.

    For a technique that leaves a report on the model (``model.pruning_report``): the
    report's ``to_record()`` is saved with the model and ``report_class.from_record``
    puts it back when the model loads.

    Example:
        >>> from keras_llmopt._src.core import targeting
        >>> handlers = report_handlers("my_report", targeting.TargetReport)
        >>> sorted(handlers)
        ['model_record', 'restore_model']
    """

    def model_record(model):
        report = getattr(model, attr, None)
        return report.to_record() if isinstance(report, report_class) else None

    def restore_model(model, record):
        object.__setattr__(model, attr, report_class.from_record(record))

    return {"model_record": model_record, "restore_model": restore_model}


class LiveMapping(Mapping):
    """A read-only mapping recomputed from ``build()`` on every access (registry views).

    Example:
        >>> view = LiveMapping(lambda: {"a": 1})
        >>> dict(view)
        {'a': 1}
    """

    def __init__(self, build):
        self._build = build

    def __getitem__(self, name):
        return self._build()[name]

    def __iter__(self):
        return iter(self._build())

    def __len__(self):
        return len(self._build())


def register_technique(technique, replace=False):
    """Adds ``technique`` to the registry (recipes, CLI and benchmark see it at once).

    Args:
        technique: A :class:`Technique`.
        replace: Replace a technique already registered under that name (re-imported
            plugin modules).

    Returns:
        The technique.

    Raises:
        TypeError: Not a :class:`Technique`.
        ValueError: The name, stage or a variant name is taken by another technique.

    Example:
        >>> _ = register_technique(Technique(name="doc_noop"), replace=True)
        >>> get_technique("doc_noop").name
        'doc_noop'
    """
    if not isinstance(technique, Technique):
        raise TypeError(f"register_technique takes a Technique. Received: {technique!r}")
    if not technique.name or not isinstance(technique.name, str):
        raise ValueError(f"A technique needs a name. Received: name={technique.name!r}")
    _load_builtins()
    if technique.name in _TECHNIQUES and not replace:
        raise ValueError(
            f"A technique named {technique.name!r} is already registered; pass replace=True "
            f"to replace it. Received: name={technique.name!r}"
        )
    for other in _TECHNIQUES.values():
        if other.name == technique.name:
            continue
        if technique.stage and other.stage == technique.stage:
            raise ValueError(
                f"Recipe stage {technique.stage!r} is already technique {other.name!r}'s. "
                f"Received: stage={technique.stage!r}"
            )
        taken = sorted(set(other.variants) & set(technique.variants))
        if taken:
            raise ValueError(
                f"Benchmark variants {taken} already belong to technique {other.name!r}."
            )
    if technique.stage and technique.run_stage is None:
        raise ValueError(
            f"Technique {technique.name!r} declares stage {technique.stage!r} but no "
            "run_stage. Received: run_stage=None"
        )
    _TECHNIQUES[technique.name] = technique
    return technique


def unregister_technique(name):
    """Removes a technique (tests and plugin reloads); unknown names are ignored.

    Example:
        >>> unregister_technique("doc_noop")
    """
    _TECHNIQUES.pop(name, None)


def techniques():
    """Every registered technique, built-ins first, in registration order.

    Example:
        >>> [t.name for t in techniques()][:3]
        ['pruning', 'clustering', 'quantization']
    """
    _load_builtins()
    _load_entry_points()
    order = {name: i for i, name in enumerate(_BUILTIN_ORDER)}
    indexed = enumerate(_TECHNIQUES.values())
    ranked = sorted(indexed, key=lambda item: (order.get(item[1].name, len(order)), item[0]))
    return [technique for _, technique in ranked]


def get_technique(name):
    """The technique registered as ``name``.

    Raises:
        KeyError: Unknown name (the message lists the registered ones).

    Example:
        >>> get_technique("pruning").stage
        'prune'
    """
    found = {t.name: t for t in techniques()}
    if name not in found:
        raise KeyError(
            f"Unknown technique {name!r}; registered: {sorted(found)}. Register yours with "
            "keras_llmopt.techniques.register_technique(...)."
        )
    return found[name]


def technique_for_stage(stage):
    """The technique whose recipe stage is ``stage``, or ``None``.

    Example:
        >>> technique_for_stage("quantize").name
        'quantization'
    """
    for technique in techniques():
        if technique.stage == stage:
            return technique
    return None


def benchmark_variants():
    """``{variant name: (technique name, builder)}`` of every technique's variants.

    Example:
        >>> isinstance(benchmark_variants(), dict)
        True
    """
    found = {}
    for technique in techniques():
        for name, build in technique.variants.items():
            found[name] = (technique.name, build)
    return found


def load_plugins(names):
    """Imports plugin modules (dotted names or ``.py`` paths) that register techniques.

    Args:
        names: A list of module names (``"my_package.my_technique"``) or paths of
            Python files.

    Returns:
        The imported modules.

    Raises:
        ValueError: A name that cannot be imported (the message names it and why).

    Example:
        >>> load_plugins([])
        []
    """
    modules = []
    for name in names or ():
        try:
            if name.endswith(".py") or os.sep in name:
                path = os.path.abspath(name)
                module_name = "keras_llmopt_plugin_" + os.path.splitext(os.path.basename(path))[0]
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or not os.path.exists(path):
                    raise FileNotFoundError(f"no such file: {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                module = importlib.import_module(name)
        except Exception as error:
            raise ValueError(
                f"Could not load the technique plugin {name!r}: {type(error).__name__}: "
                f"{error}. Received: plugins={list(names)!r}; accepted: importable module "
                "names or paths of .py files"
            ) from error
        modules.append(module)
    return modules


def _load_builtins():
    if _LOADED["builtins"]:
        return
    _LOADED["builtins"] = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def _load_entry_points():
    if _LOADED["entry_points"]:
        return
    _LOADED["entry_points"] = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
