"""Which of the package's modules a stage's code is made of, read from the imports, never listed by hand.

The engines re-run a stage when its script changes, not when a module it imports does: the stage table gives
each stage its script's import closure (`closure`) as dependencies, so editing a module re-runs exactly the
stages whose code loads it. Imports inside functions count (a stage runs what it imports late too), those under
`if TYPE_CHECKING:` do not (annotations only); the backbone families, loaded by name through importlib
(families.FAMILIES), count for every stage that loads `families`. Parses source, imports nothing of it.
"""
from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parent
NAME = PACKAGE.name


def _statements(tree: ast.AST, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in _statements(ast.Module([child], []), lazy))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _statements(node, lazy)


@functools.cache
def imported(path: Path, lazy: bool = True) -> frozenset[str]:
    """The package's modules a file imports directly (by name within the package; `__init__` for the package);
    without `lazy`, only those importing the file loads (none inside its functions)."""
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text()), lazy):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = NAME if node.level == 1 else (node.module or "")
            module = f"{base}.{node.module}" if node.level == 1 and node.module else base
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        found |= {name.split(".")[1] for name in names
                  if name.startswith(NAME + ".") and (PACKAGE / f"{name.split('.')[1]}.py").exists()}
        if any(name == NAME or name.startswith(NAME + ".") for name in names):
            found.add("__init__")
    return frozenset(found)


def _by_name() -> list[str]:
    """The modules families.py loads by name (importlib): one per backbone family."""
    tree = ast.parse((PACKAGE / "families.py").read_text())
    return sorted({node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                   and isinstance(node.value, str) and node.value.isidentifier()
                   and (PACKAGE / f"{node.value}.py").is_file()})


def closure(names: list[str], lazy: bool = True) -> list[str]:
    """The named modules of the package and every one of its modules that loading them may load (without `lazy`:
    that importing them loads), in a stable order."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported(PACKAGE / f"{name}.py", lazy)
            if name == "families" and lazy:
                todo += _by_name()
    return sorted(seen)
