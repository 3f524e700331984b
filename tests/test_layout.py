"""The package's shape: no import circles, and the public names where users and plugins find them.

The layers themselves (cli on top, errors at the bottom) are import-linter contracts in
pyproject.toml, checked by `make test` (`lint-imports`); docs/architecture.md draws them.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import cnntool

PACKAGE = Path(cnntool.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cnntool modules it imports when it is imported (top-level imports;
    `if TYPE_CHECKING:` blocks and imports inside functions run later, if ever)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            targets: list[str] = []
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("cnntool")
            ):
                submodules = [f"{node.module}.{alias.name}" for alias in node.names]
                found = [t for t in submodules if t in modules]
                # `from package import submodule` needs the submodule; the package is its parent.
                targets = found or [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("cnntool")]
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 90  # the walk found the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(cnntool.__all__))
def test_every_public_name_resolves(name):
    assert getattr(cnntool, name) is not None


ALIASES = {
    "optim": "cnntool.training.optim",
    "registry": "cnntool.model.registry",
    "spec": "cnntool.model.spec",
    "train": "cnntool.training.loop",
    "schedules": "cnntool.training.schedules",
}


@pytest.mark.parametrize("alias, home", sorted(ALIASES.items()))
def test_public_alias_modules_are_their_homes_names(alias, home):
    module = importlib.import_module(f"cnntool.{alias}")
    home_module = importlib.import_module(home)
    assert module.__all__ == home_module.__all__
    for name in module.__all__:
        assert getattr(module, name) is getattr(home_module, name)
    assert getattr(cnntool, alias) is module


def test_names_plugins_import_stay_where_the_docs_say():
    from cnntool.layers import GRAD_OUT, Array, Call, Epilogue, Layer, LayerConfig, Shape, X, buf, grad, param
    from cnntool.testing import check_gradients, check_layer, make_layer

    assert Layer is cnntool.Layer and LayerConfig is cnntool.LayerConfig
    assert all(callable(f) for f in (buf, grad, param, check_gradients, check_layer, make_layer))
    assert {GRAD_OUT, Array, Call, Epilogue, Shape, X}
    assert cnntool.optim.SGD.__module__ == "cnntool.training.optim"


def test_import_cnntool_loads_no_numba():
    import subprocess
    import sys

    code = "import sys, cnntool; print('numba' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
