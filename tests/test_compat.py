"""Keras and TensorFlow internals are used in keras_tlnode/compat.py only, and the package works without TF's JVP hook."""

import ast
import subprocess
from pathlib import Path

import child_process
import pytest

import keras_tlnode

PACKAGE = Path(keras_tlnode.__file__).resolve().parent
COMPAT = PACKAGE / "compat.py"


def own_names(sources: list[str]) -> set[str]:
    """Every name the package defines: functions, classes, assigned names and attributes, arguments."""
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def internals_used(source: str, own: set[str]) -> list[str]:
    """What `source` reaches of Keras's and TensorFlow's internals, one line per use."""
    found = []
    for node in ast.walk(ast.parse(source)):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        for module in modules:
            if module.startswith(("keras.src", "tensorflow.python", "tf_keras")) or "pywrap" in module:
                found.append(f"line {node.lineno}: import of {module}")
        if isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.endswith("__")
            mine = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if node.attr == "__internal__" or "pywrap" in node.attr:
                found.append(f"line {node.lineno}: .{node.attr}")
            elif private and not mine and node.attr not in own:
                found.append(f"line {node.lineno}: private attribute .{node.attr}")
    return found


def test_no_module_but_compat_uses_an_internal():
    paths = sorted(PACKAGE.glob("*.py"))
    sources = {path.name: path.read_text() for path in paths}
    own = own_names(list(sources.values()))
    uses = {name: internals_used(source, own) for name, source in sources.items() if name != COMPAT.name}
    assert not {name: found for name, found in uses.items() if found}


@pytest.mark.parametrize(
    "snippet",
    [
        "from keras.src.models.functional import Functional",
        "import tensorflow.python.eager.forwardprop",
        "root = tf.__internal__.tracking.AutoTrackable()",
        "layers = model._flatten_layers(include_self=False)",
        "from tensorflow.python import pywrap_tfe",
    ],
)
def test_the_check_catches_each_kind_of_internal(snippet):
    assert internals_used(snippet, own_names([COMPAT.read_text()])) and not internals_used(
        "self._private = 1\nlayer.correction.trust_weight", set()
    )


def test_compat_holds_what_the_check_would_flag():
    # Otherwise the check above passes for a module that no longer needs compat.
    assert internals_used(COMPAT.read_text(), set())


def test_without_tensorflows_jvp_hook_the_coefficients_come_from_its_own_forward_mode():
    result = subprocess.run(
        child_process.command("coefficients_without_jvp_hook.py"),
        capture_output=True,
        text=True,
        env=child_process.environment(),
        timeout=300,
    )
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr[-3000:]
