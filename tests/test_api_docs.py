"""The generated API reference against the package: drift between `__all__`, docs/api.md and the docstrings.

docs/api.md is one mkdocstrings directive (`::: keras_tlnode.<name>`) per public
name, rendered from the docstrings by `mkdocs build` (mkdocs.yml; `.ci/run`
builds it with `--strict`, which fails on a directive that names nothing). These
tests fail when the directives and `__all__` differ, when a public docstring
lacks one of the sections Keras's own docstrings have (Args, Call arguments,
Input shape, Output shape, Returns, Example), when a public method goes
undocumented (the reference leaves members without a docstring out), or when a
relative link in docs/*.md reaches no file (mkdocs reports links that leave
docs/, to the README or the scripts, only as information).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import keras
import pytest

import keras_tlnode

DOCS = Path(__file__).resolve().parent.parent / "docs"
DIRECTIVE = re.compile(r"^::: keras_tlnode\.(\w+)\s*$", re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.MULTILINE | re.DOTALL)
PUBLIC = sorted(keras_tlnode.__all__)
# Keras's base classes: a public method they define too is an override that Keras documents
# (`build`, `call`, `get_config`, `on_epoch_end`, ...); `compile` is checked on its own.
KERAS_BASES = (keras.layers.Layer, keras.Model, keras.callbacks.Callback)
# Keras's serialisation protocol, which `DormandPrinceTeacher` follows without deriving from Keras.
SERIALISATION = {"get_config", "from_config"}
# Sections of a layer's (or a model's with its own `call`) docstring, as in keras.layers.Dense.
LAYER_SECTIONS = {"Args", "Call arguments", "Input shape", "Output shape", "Example"}


def sections(obj: object) -> set[str]:
    """The section titles of `obj`'s docstring: its unindented lines `Title:`."""
    return set(re.findall(r"^([A-Z][A-Za-z ]*):$", inspect.getdoc(obj) or "", re.MULTILINE))


def package_defines(cls: type, name: str) -> bool:
    """Whether the attribute `name` of `cls` comes from a class of this package."""
    owner = next(klass for klass in cls.__mro__ if name in vars(klass))
    return owner.__module__.startswith("keras_tlnode.")


def public_methods(cls: type) -> list[str]:
    """`cls`'s public attributes that the package adds to Keras's (its own API, not overrides)."""
    return sorted(
        name
        for name in dir(cls)
        if not name.startswith("_")
        and package_defines(cls, name)
        and not any(hasattr(base, name) for base in KERAS_BASES)
        and name not in SERIALISATION
    )


def test_api_md_documents_exactly_the_public_names():
    named = DIRECTIVE.findall((DOCS / "api.md").read_text(encoding="utf-8"))
    assert len(named) == len(set(named)), f"docs/api.md names a name twice: {sorted(named)}"
    missing, unknown = set(PUBLIC) - set(named), set(named) - set(PUBLIC)
    assert not missing, f"in keras_tlnode.__all__ but without a `::: keras_tlnode.<name>` in docs/api.md: {missing}"
    assert not unknown, f"docs/api.md documents names that are not in keras_tlnode.__all__: {unknown}"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_docstring_has_keras_sections(name):
    obj = getattr(keras_tlnode, name)
    found = sections(obj)
    if inspect.isfunction(obj):
        required = {"Args", "Example"}
        assert found & {"Returns", "Raises"}, f"{name}'s docstring has neither Returns: nor Raises:"
    elif issubclass(obj, KERAS_BASES[:2]) and obj.call.__module__.startswith("keras_tlnode."):
        required = LAYER_SECTIONS
    elif "__init__" in vars(obj):
        required = {"Args", "Example"}
    else:  # a model with Keras's constructor: its arguments are `compile`'s (below)
        required = {"Example"}
    assert required <= found, f"{name}'s docstring lacks the sections {sorted(required - found)}"


@pytest.mark.parametrize("name", [name for name in PUBLIC if inspect.isclass(getattr(keras_tlnode, name))])
def test_public_methods_are_documented(name):
    cls = getattr(keras_tlnode, name)
    if issubclass(cls, keras.Model):
        assert "Args" in sections(cls.compile), f"{name}.compile's docstring lacks Args:"
    for method in public_methods(cls):
        attribute = inspect.getattr_static(cls, method)
        where = f"{name}.{method}"
        assert inspect.getdoc(attribute), f"{where} has no docstring (the API reference leaves it out)"
        if not inspect.isfunction(attribute):
            continue  # a property: its summary is enough
        signature = inspect.signature(attribute)
        found = sections(attribute)
        if len(signature.parameters) > 1:
            assert "Args" in found, f"{where} takes arguments but its docstring lacks Args:"
        if signature.return_annotation not in (None, "None"):
            assert "Returns" in found, f"{where} returns a value but its docstring lacks Returns:"


def test_relative_links_in_docs_reach_files():
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in LINK.findall(CODE.sub("", page.read_text(encoding="utf-8"))):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not path.startswith("mailto:") and not (page.parent / path).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, f"links to missing files: {broken}"
