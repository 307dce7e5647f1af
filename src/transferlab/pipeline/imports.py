"""Which of the package's modules a stage's code is made of, read from the imports, never listed by hand.

The engines re-run a stage when its script changes, not when a module it imports does: the stage table gives
each stage its script's import closure (`closure`) as dependencies, so editing a module re-runs exactly the
stages whose code loads it. Modules are named by their dotted path within transferlab (`probe.features`; a
sub-package by its own name, `probe`, which is its `__init__.py`; the package itself is `__init__`). Imports
inside functions count (a stage runs what it imports late too), those under `if TYPE_CHECKING:` do not
(annotations only); the backbone families, loaded by name through importlib (models/families.py), count for
every stage that loads the families. Parses source, imports nothing of it.
"""
from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parents[1]
NAME = PACKAGE.name
FAMILIES = "models.families"


def file(module: str) -> Path:
    """The source file of a module named by its dotted path within the package."""
    if module == "__init__":
        return PACKAGE / "__init__.py"
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def paths(names: list[str]) -> list[str]:
    """The source files of modules named by their dotted paths, relative to the project root."""
    return [file(name).relative_to(PACKAGE.parent.parent).as_posix() for name in names]


def modules() -> list[str]:
    """Every module of the package, by dotted path."""
    return sorted(_name(path) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts) or "__init__"


def _statements(tree: ast.AST, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in _statements(ast.Module([child], []), lazy))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _statements(node, lazy)


def _loaded(dotted: str) -> set[str]:
    """The package's modules importing `transferlab.<dotted>` loads: it and every package above it."""
    parts = dotted.split(".")
    found = {"__init__"}
    for end in range(1, len(parts) + 1):
        name = ".".join(parts[:end])
        if not file(name).is_file():
            break
        found.add(name)
    return found


@functools.cache
def imported(path: Path, lazy: bool = True) -> frozenset[str]:
    """The package's modules a file imports directly; without `lazy`, only those importing the file loads (none
    inside its functions)."""
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text()), lazy):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == NAME:
                found.add("__init__")
            elif name.startswith(NAME + "."):
                found |= _loaded(name.removeprefix(NAME + "."))
    return frozenset(found)


def _by_name() -> list[str]:
    """The modules the families module loads by name (importlib): one per backbone family, beside it, each the
    first argument of a `Family(...)` row."""
    package = FAMILIES.rsplit(".", 1)[0]
    return sorted(f"{package}.{node.args[0].value}" for node in ast.walk(ast.parse(file(FAMILIES).read_text()))
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Family"
                  and node.args and isinstance(node.args[0], ast.Constant))


def closure(names: list[str], lazy: bool = True) -> list[str]:
    """The named modules and every module of the package that loading them may load (without `lazy`: that
    importing them loads), in a stable order."""
    seen: set[str] = set()
    todo = [module for name in names for module in _loaded(name)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported(file(name), lazy)
            if name == FAMILIES and lazy:
                todo += _by_name()
    return sorted(seen)
