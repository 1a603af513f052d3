"""Private Keras access lives in one module, audited on every Keras upgrade."""

import ast
import pathlib

import keras_llmopt

PACKAGE = pathlib.Path(keras_llmopt.__file__).parent
COMPAT = PACKAGE / "_src" / "core" / "keras_compat.py"


def _private_keras_uses(path):
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            found.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "src":
            if isinstance(node.value, ast.Name) and node.value.id == "keras":
                found.append(node.lineno)
    return found


def test_no_module_but_keras_compat_imports_keras_internals():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path == COMPAT:
            continue
        lines = _private_keras_uses(path)
        if lines:
            offenders[str(path.relative_to(PACKAGE))] = lines
    assert not offenders, f"keras.src used outside core/keras_compat.py: {offenders}"
    assert _private_keras_uses(COMPAT)  # the audit has something to look at
