"""The layers of ../shared/DESIGN.md "Layout": datamodules < lightning_modules, callbacks < launch < bench.

Every import of every module is read from its source (ast), wherever it stands: at the top, inside a function, under
`if TYPE_CHECKING` -- an import hidden in a function is still a dependency, and the way cycles were hidden before.
A module may import its own layer or a lower one; the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"datamodules": 0, "lightning_modules": 1, "callbacks": 1, "launch": 2, "bench": 3}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    return {module_name(root, p): p for package in LAYERS if (root / package).is_dir()
            for p in sorted((root / package).rglob("*.py"))}


def imported(tree: ast.AST, importer: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules a module's source imports: `from a.b import c` is a.b.c when c is a module, else a.b."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                package = importer.split(".") if is_package else importer.split(".")[:-1]
                anchor = package[:len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a package: its deepest project module
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    known = set(modules)
    return {name: imported(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", known)
            - {name} for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    layer = lambda module: LAYERS[module.split(".")[0]]  # noqa: E731
    return sorted(f"{a} imports {b} (layer {b.split('.')[0]} is above {a.split('.')[0]})"
                  for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph(REPO)) == []


def test_no_import_cycle():
    assert cycles(import_graph(REPO)) == []


def test_every_top_level_package_has_a_layer():
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"


# -- the checker itself, on a small tree with one of each fault ------------------------------------------------------
def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def faulty(tmp_path) -> dict[str, set[str]]:
    return import_graph(write(tmp_path, {
        "datamodules/__init__.py": "",
        "datamodules/a.py": "def f():\n    from lightning_modules.m import X  # hidden in a function\n",
        "lightning_modules/__init__.py": "",
        "lightning_modules/m.py": "from datamodules import a\nX = 1\n",
        "lightning_modules/pkg/__init__.py": "from .inner import Y\n",
        "lightning_modules/pkg/inner.py": "import lightning_modules.pkg\nY = 2\n",
        "callbacks/__init__.py": "",
        "callbacks/c.py": "import lightning_modules.m\nimport launch.tool as t\n",
        "launch/__init__.py": "",
        "launch/tool.py": "from callbacks.c import *\n",
    }))


def test_checker_finds_upward_imports_even_inside_functions(faulty):
    assert upward_imports(faulty) == [
        "callbacks.c imports launch.tool (layer launch is above callbacks)",
        "datamodules.a imports lightning_modules.m (layer lightning_modules is above datamodules)"]


def test_checker_finds_cycles_through_hidden_and_relative_imports(faulty):
    assert cycles(faulty) == [["callbacks.c", "launch.tool"], ["datamodules.a", "lightning_modules.m"],
                              ["lightning_modules.pkg", "lightning_modules.pkg.inner"]]
