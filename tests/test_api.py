"""The public API: `import spatialmix as sm` gives every listed name, each from its one home module."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import spatialmix as sm
from conftest import SUBPROCESS_ENV

API_FILE = Path(sm.__file__).with_name("api.py")


def api_imports() -> dict[str, str]:
    """name -> the module api.py imports it from."""
    homes = {}
    for node in ast.parse(API_FILE.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.asname is None, f"{alias.name} is renamed in api.py"
                homes[alias.name] = node.module
    return homes


def test_all_lists_exactly_the_names_of_the_api_module():
    assert set(sm.__all__) - {"__version__"} == set(api_imports())
    assert len(sm.__all__) == len(set(sm.__all__))


@pytest.mark.parametrize("name", sorted(api_imports()))
def test_every_public_name_resolves_to_the_object_of_its_home_module(name):
    home = sys.modules.get(api_imports()[name]) or __import__(api_imports()[name], fromlist=[name])
    value = getattr(sm, name)
    assert value is getattr(home, name)
    if isinstance(value, type) or callable(value) and hasattr(value, "__module__"):
        assert value.__module__ == api_imports()[name], f"{name} is defined in {value.__module__}"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'train_model'"):
        sm.train_model  # noqa: B018


def test_importing_the_package_and_its_command_line_imports_no_torch():
    code = (
        "import sys, spatialmix, spatialmix.cli.main; "
        "print(spatialmix.__version__, sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV, check=True
    )
    assert out.stdout.split() == [sm.__version__, "[]"]


def _without_line_counts(lines: list[str]) -> list[str]:
    return [" ".join(word for word in line.split() if not word.isdigit()) for line in lines]


def test_the_layout_page_is_the_generated_module_map():
    """docs/layout.md is the map of the package, as `python scripts/layout.py --write` writes it: every
    module, in its place, with its docstring's first line. (The line counts move with every edit and
    are refreshed by the same command, not checked here.)"""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("layout", root / "scripts" / "layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    page = (root / "docs" / "layout.md").read_text()
    shown = page.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    assert _without_line_counts(shown) == _without_line_counts(layout.module_map())
    package = Path(sm.__file__).parent
    modules = {p.name for p in package.rglob("*.py") if p.name != "__init__.py" or p.parent == package}
    assert modules <= {line.split()[0] for line in shown}
