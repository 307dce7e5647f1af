"""The stage table against the code: dvc.yaml is its rendering, and each stage's module list is what its script
imports (Snakemake re-runs a rule when its script changes, not when an imported module does)."""
import ast
from pathlib import Path

import pytest
from conftest import ROOT

from transferlab.stages import TABLE, dvc_yaml, script

PACKAGE = ROOT / "src" / "transferlab"


def test_dvc_yaml_is_generated_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml is stale: python -m transferlab.stages > dvc.yaml"


def _imported(path: Path) -> set[str]:
    """The package's modules a file imports when it is loaded: its top-level imports (not those inside functions
    or `if TYPE_CHECKING:`), as module names within transferlab."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "transferlab" if node.level == 1 else (node.module or "")
            module = f"{base}.{node.module}" if node.level == 1 and node.module else base
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names
                  if n.startswith("transferlab.") and (PACKAGE / f"{n.split('.')[1]}.py").exists()}
        if any(n == "transferlab" or n.startswith("transferlab.") for n in names):
            found.add("__init__")
    return found


def modules_loaded(path: Path) -> set[str]:
    """Every module of the package that loading `path` loads, following imports through the package."""
    seen: set[str] = set()
    todo = list(_imported(path))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imported(PACKAGE / f"{name}.py")
    return seen


@pytest.mark.parametrize("stage", list(TABLE))
def test_stage_modules_are_what_the_script_imports(stage):
    assert modules_loaded(ROOT / script(stage)) == set(TABLE[stage].modules)
    assert len(TABLE[stage].modules) == len(set(TABLE[stage].modules))


def test_the_import_walk_finds_what_python_loads():
    """The AST walk agrees with the interpreter on one stage (a subprocess importing its script)."""
    import subprocess
    import sys

    code = (f"import runpy, sys; sys.argv = ['x', '--help']\nrunpy.run_path({script('report')!r}, run_name='x')\n"
            "print(' '.join(sorted(m.split('.')[1] if '.' in m else '__init__' for m in sys.modules "
            "if m == 'transferlab' or m.startswith('transferlab.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == modules_loaded(ROOT / script("report"))
