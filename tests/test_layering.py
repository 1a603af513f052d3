"""The package's import graph: no circles, imports only go down the layers, thin public modules.

Every module under ``keras_llmopt/_src`` is parsed with ``ast`` (imports at module level
and inside functions alike, so a deferred import cannot hide a circle), and each
``keras_llmopt`` import becomes an edge ``module -> imported module (line)``.

The violations that exist today in code owned by others are listed in ``KNOWN_CYCLES``
and ``KNOWN_LAYER_VIOLATIONS``. The test fails on any new one, and also on a known entry
that no longer occurs, so the lists only ever shrink: delete an entry when its import goes.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "keras_llmopt"
SRC = "keras_llmopt._src"

# The layers of keras_llmopt._src, lowest first. A module may import modules of its own
# package and of packages in LOWER layers only. Packages sharing a layer are peers and do
# not import each other: techniques meet in the core (its registry, layer state and model
# copy), never through each other's modules. Names of packages that do not exist yet
# (llm, generation) are placed already. Why this order (read from the imports):
#   - export sits above the techniques: it reads their state to pick a TFLite mode;
#   - reference (the GPT, corpus, evaluation) sits above export: it runs exported files
#     back to evaluate them, and export never needs the reference model;
#   - pipeline < benchmark < cli: the benchmark builds its variants with the pipeline's
#     stage helpers and owns its report; the CLI drives everything.
# The public modules keras_llmopt/*.py stand above all of these and only re-export.
LAYERS = (
    ("core",),
    ("sparsity", "quantization", "clustering", "ensemble", "llm", "generation"),
    ("export",),
    ("reference",),
    ("pipeline",),
    ("benchmark",),
    ("cli",),
)

# Circles between modules, each as the sorted modules of one strongly connected component.
KNOWN_CYCLES = set()

# Imports that break the layering: (importing module, imported module).
KNOWN_LAYER_VIOLATIONS = set()

# Implementation modules importing a public module (the top layer): import from _src.
KNOWN_PUBLIC_IMPORTS = set()

# Public modules that are not re-export trees, and why.
PUBLIC_EXEMPT = {"__main__": "the `python -m keras_llmopt` entry point"}


def module_files(root, package):
    """``{module name: path}`` of every ``.py`` file of ``package`` found under ``root``."""
    base = root / package.replace(".", "/")
    modules = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute(node, module, is_package):
    """The absolute dotted name a ``from ... import`` node imports from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module, path, known, prefix=PACKAGE):
    """``[(imported module, line)]`` for every import of a ``prefix`` module in ``path``.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else
    ``a.b``. A name under ``prefix`` that is no module is returned as it is, so a stale
    import shows up instead of vanishing.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in dict.fromkeys(names):
            if name == prefix or name.startswith(prefix + "."):
                found.append((name, node.lineno))
    return found


def import_graph(root, package):
    """``{module: [(imported module, line)]}`` for the modules of ``package`` under ``root``."""
    files = module_files(root, package)
    return {m: imports_of(m, p, files, package) for m, p in files.items()}


def cycles(graph):
    """The circles of ``graph``: sorted tuples of modules, one per strongly connected part."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            self_loop = any(t == node for t, _ in graph.get(node, ()))
            if len(part) > 1 or self_loop:
                found.append(tuple(sorted(part)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return set(found)


def layer_of(module, src=SRC, layers=LAYERS):
    """The index in ``layers`` of ``module``'s package, or None if it has no layer."""
    rest = module[len(src) + 1 :].split(".") if module.startswith(src + ".") else [""]
    for i, packages in enumerate(layers):
        if rest[0] in packages:
            return i
    return None


def layer_violations(graph, src=SRC, layers=LAYERS):
    """``{(module, imported): [lines]}`` of imports into the same or a higher layer."""
    bad, depth = {}, src.count(".") + 2  # the parts that name a package: src + one
    for module, edges in graph.items():
        own, package = layer_of(module, src, layers), module.split(".")[:depth]
        for target, line in edges:
            if target.split(".")[:depth] == package or not target.startswith(src + "."):
                continue
            if layer_of(target, src, layers) is None or layer_of(target, src, layers) >= own:
                bad.setdefault((module, target), []).append(line)
    return bad


def _edge_lines(graph, pairs):
    lines = []
    for module, target in sorted(pairs):
        at = [line for t, line in graph.get(module, ()) if t == target]
        lines.append(f"  {module} -> {target} ({', '.join(map(str, at)) or 'gone'})")
    return "\n".join(lines)


def _check_known(found, known, what, graph):
    new, stale = set(found) - known, known - set(found)
    message = []
    if new:
        message.append(f"new {what} (fix the import, do not add it to the KNOWN list):")
        message.append(_edge_lines(graph, new))
    if stale:
        message.append(f"KNOWN {what} that no longer occur (delete them from the list):")
        message.append("\n".join(f"  {a} -> {b}" for a, b in sorted(stale)))
    assert not message, "\n".join(message)


@pytest.fixture(scope="module")
def whole_graph():
    """The graph of the whole package, public modules included."""
    return import_graph(ROOT, PACKAGE)


@pytest.fixture(scope="module")
def graph(whole_graph):
    """The graph of the implementation modules (``keras_llmopt._src``)."""
    return {m: e for m, e in whole_graph.items() if m == SRC or m.startswith(SRC + ".")}


def test_every_package_has_a_layer(graph):
    placed = {p for packages in LAYERS for p in packages}
    unplaced = sorted({m for m in graph if m != SRC and layer_of(m) is None})
    assert not unplaced, (
        f"modules of {SRC} outside every package of LAYERS (add the package to the table "
        f"in tests/test_layering.py, where its imports allow): {unplaced}; placed: "
        f"{sorted(placed)}"
    )


def test_every_import_names_a_module(whole_graph):
    stale = [
        f"  {m} -> {t} ({line})"
        for m, edges in whole_graph.items()
        for t, line in edges
        if t not in whole_graph
    ]
    assert not stale, "imports of keras_llmopt modules that do not exist:\n" + "\n".join(stale)


def test_no_import_cycles(graph):
    found = cycles(graph)
    edges = set()
    for part in found ^ KNOWN_CYCLES:
        edges |= {(m, t) for m in part for t, _ in graph.get(m, ()) if t in part}
    new, stale = found - KNOWN_CYCLES, KNOWN_CYCLES - found
    assert not new and not stale, (
        f"new import cycles: {sorted(new)}; KNOWN cycles that no longer occur (delete them): "
        f"{sorted(stale)}; the imports involved:\n{_edge_lines(graph, edges)}"
    )


def test_imports_go_down_the_layers(graph):
    found = layer_violations(graph)
    pairs = {(m, t) for m, t in found}
    _check_known(pairs, KNOWN_LAYER_VIOLATIONS, "imports against the layering", graph)


def test_implementation_never_imports_public_modules(graph):
    upward = {(m, t) for m, edges in graph.items() for t, _ in edges if not t.startswith(SRC)}
    _check_known(upward, KNOWN_PUBLIC_IMPORTS, "imports of public modules from _src", graph)


def _public_problems(path):
    """What in a public module is more than docstring, ``_src`` imports and ``__all__``."""
    tree = ast.parse(path.read_text())
    problems, imported, exported = [], set(), None
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(SRC + "."):
            imported |= {alias.asname or alias.name for alias in node.names}
            continue
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name == "__all__":
                exported = set(ast.literal_eval(node.value))
                continue
            if name == "__version__" and path.name == "__init__.py":
                continue
        problems.append(f"{path.name}:{node.lineno} {type(node).__name__}")
    if exported is not None and exported != imported:
        problems.append(
            f"{path.name}: __all__ and the re-exported names differ: {sorted(exported ^ imported)}"
        )
    return problems


def test_public_modules_only_re_export():
    problems = []
    for path in sorted((ROOT / PACKAGE).glob("*.py")):
        if path.stem not in PUBLIC_EXEMPT:
            problems += _public_problems(path)
    assert not problems, "public modules must only re-export from _src:\n" + "\n".join(problems)


# The checker itself, on a small made-up package: it must see what it claims to see.


def test_checker_sees_function_level_relative_and_from_imports(tmp_path):
    for folder in ("pkg/low", "pkg/high"):
        (tmp_path / folder).mkdir(parents=True)
    sources = {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    from pkg.high import b\n",
        "pkg/high/__init__.py": "",
        "pkg/high/b.py": "from ..low import a\nfrom . import c\n",
        "pkg/high/c.py": "import pkg.high.b\nfrom pkg.high.b import thing\n",
    }
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.low.a"] == [("pkg.high.b", 2)]
    assert graph["pkg.high.b"] == [("pkg.low.a", 1), ("pkg.high.c", 2)]
    assert graph["pkg.high.c"] == [("pkg.high.b", 1), ("pkg.high.b", 2)]
    assert cycles(graph) == {("pkg.high.b", "pkg.high.c", "pkg.low.a")}
    layers = (("low",), ("high",))
    assert layer_violations(graph, "pkg", layers) == {("pkg.low.a", "pkg.high.b"): [2]}
    peers = (("low", "high"),)
    assert set(layer_violations(graph, "pkg", peers)) == {
        ("pkg.low.a", "pkg.high.b"),
        ("pkg.high.b", "pkg.low.a"),
    }


def test_known_lists_fail_both_ways():
    graph = {"m": [("n", 3)]}
    with pytest.raises(AssertionError, match=r"new .*\n\s+m -> n \(3\)"):
        _check_known({("m", "n")}, set(), "imports", graph)
    with pytest.raises(AssertionError, match=r"no longer occur.*\n\s+m -> gone"):
        _check_known(set(), {("m", "gone")}, "imports", graph)
    _check_known({("m", "n")}, {("m", "n")}, "imports", graph)


def test_public_module_check_flags_code(tmp_path):
    path = tmp_path / "thing.py"
    path.write_text(
        '"""Doc."""\n\nfrom keras_llmopt._src.x import a\n\n__all__ = ["a", "b"]\n\n'
        "def helper():\n    pass\n"
    )
    problems = _public_problems(path)
    assert "thing.py:7 FunctionDef" in problems
    assert any("differ: ['b']" in p for p in problems)
