"""Package-level rules: layering, a light import, documented public names, doctests."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import spacesql
import spacesql.errors

PACKAGE = Path(spacesql.__file__).parent
#: Lower layers must not import higher ones.
LAYERS = ["errors", "engine", "catalog", "sql", "session", "integrations", "cli"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "spacesql" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def _modules():
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="spacesql."):
        if not info.name.endswith("__main__"):  # importing it runs the CLI
            yield info.name


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_go_down_the_layers(module):
    source = Path(importlib.util.find_spec(module).origin).read_text()
    own = _layer(module)
    if own is None:
        return
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module]
        for target in targets:
            layer = _layer(target)
            assert layer is None or layer <= own, f"{module} imports {target} (higher layer)"
        for target in targets:
            if target.split(".")[0] in {"sqlglot", "jinja2"}:
                assert module.startswith("spacesql.sql"), f"{module} imports {target}"


def test_import_is_light():
    code = (
        "import sys, spacesql; heavy = [m for m in ('torch', 'ray', 'datasets', "
        "'label_studio_sdk') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_are_documented():
    for name in spacesql.__all__:
        obj = getattr(spacesql, name)
        if isinstance(obj, str):
            continue
        assert obj.__doc__, f"spacesql.{name} has no docstring"


def test_error_hierarchy():
    for name in spacesql.errors.__all__:
        cls = getattr(spacesql.errors, name)
        assert issubclass(cls, spacesql.errors.SpaceSQLError)
        assert cls.__doc__
    assert issubclass(spacesql.SnapshotNotFoundError, LookupError)
    assert issubclass(spacesql.SchemaError, ValueError)
    assert issubclass(spacesql.MissingDependencyError, ImportError)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_doctests(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
