"""docs/ARCHITECTURE.md stays true: its module map and layer table match the code."""

import ast
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def _load_script():
    spec = importlib.util.spec_from_file_location("module_map", ROOT / "scripts" / "module_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


module_map = _load_script()


def test_module_map_is_up_to_date():
    printed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "module_map.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    document = DOC.read_text()
    assert module_map.START in document and module_map.END in document
    current = document.split(module_map.START + "\n", 1)[1].split(module_map.END, 1)[0]
    assert current == printed, (
        "docs/ARCHITECTURE.md's module map is out of date: run "
        "`python scripts/module_map.py --write` (new modules need a docstring first line)"
    )
    for package in ("core/", "export/", "benchmark/report.py", "ensemble/model.py"):
        assert f"- `{package}" in printed


def test_module_map_needs_a_docstring_per_module(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "good.py").write_text('"""Does one thing.\n\nAt length."""\n')
    assert module_map.module_map(tmp_path) == "- `pkg/good.py`: Does one thing.\n"
    (tmp_path / "pkg" / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"without a docstring.*pkg/bad.py"):
        module_map.module_map(tmp_path)


def test_replace_map_keeps_the_rest_of_the_document():
    document = f"intro\n{module_map.START}\n- old\n{module_map.END}\noutro\n"
    assert module_map.replace_map(document, "- new\n") == (
        f"intro\n{module_map.START}\n- new\n{module_map.END}\noutro\n"
    )
    with pytest.raises(ValueError, match="marker"):
        module_map.replace_map("no markers", "- new\n")


def _layers_in_test():
    tree = ast.parse((ROOT / "tests" / "test_layering.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "LAYERS":
            return [list(layer) for layer in ast.literal_eval(node.value)]
    raise AssertionError("tests/test_layering.py has no LAYERS table")


def test_layer_table_matches_the_layering_test():
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", DOC.read_text(), flags=re.MULTILINE)
    documented = [re.findall(r"`(\w+)`", packages) for _, packages in rows]
    assert [int(i) for i, _ in rows] == list(range(len(rows)))
    assert documented == _layers_in_test(), (
        "the layer table of docs/ARCHITECTURE.md differs from LAYERS in tests/test_layering.py"
    )


def test_readme_points_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "docs/ARCHITECTURE.md" in readme
    outside = re.findall(r"\.\./[\w./-]+", readme)
    assert not outside, f"README.md points outside the repository: {outside}"
