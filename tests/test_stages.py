"""The stage table against the code: dvc.yaml is its rendering, and each stage's module list is what its script
imports (Snakemake re-runs a rule when its script changes, not when an imported module does)."""
import ast
from pathlib import Path

import pytest
from conftest import ROOT, write_params

from transferlab.families import FAMILIES
from transferlab.stages import TABLE, dvc_yaml, runner, script

PACKAGE = ROOT / "src" / "transferlab"


def test_dvc_yaml_is_generated_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), "dvc.yaml is stale: python -m transferlab.stages > dvc.yaml"


def _imports(tree: ast.AST, lazy: bool):
    """The import statements of a module: with `lazy`, those inside functions too (a stage runs what it imports
    late as well); never those under `if TYPE_CHECKING:` (annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in _imports(ast.Module([child], []), lazy))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from _imports(node, lazy)


def _imported(path: Path, lazy: bool) -> set[str]:
    """The package's modules a file imports (with `lazy`, inside functions too), as names within transferlab."""
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text()), lazy):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = "transferlab" if node.level == 1 else (node.module or "")
            module = f"{base}.{node.module}" if node.level == 1 and node.module else base
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names
                  if n.startswith("transferlab.") and (PACKAGE / f"{n.split('.')[1]}.py").exists()}
        if any(n == "transferlab" or n.startswith("transferlab.") for n in names):
            found.add("__init__")
    return found


def modules_loaded(path: Path, lazy: bool = True) -> set[str]:
    """Every module of the package that running `path` may load (without `lazy`: that loading it loads),
    following imports through the package."""
    seen: set[str] = set()
    todo = list(_imported(path, lazy))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imported(PACKAGE / f"{name}.py", lazy)
            if name == "families" and lazy:  # it loads each family's module by name, when a backbone is used
                todo += [family.module for family in FAMILIES.values()]
    return seen


@pytest.mark.parametrize("stage", list(TABLE))
def test_stage_modules_are_what_the_script_and_its_run_import(stage):
    """The script's imports, and those of the module of the stage's run function (`stages.runner` loads it by
    name once the stage's switch is on)."""
    run = runner(stage)
    assert callable(run)
    module = run.__module__.removeprefix("transferlab.")
    loaded = modules_loaded(ROOT / script(stage)) | {module} | modules_loaded(PACKAGE / f"{module}.py")
    assert loaded == set(TABLE[stage].modules)
    assert len(TABLE[stage].modules) == len(set(TABLE[stage].modules))


def test_the_import_walk_finds_what_python_loads():
    """The AST walk agrees with the interpreter on one stage (a subprocess importing its script)."""
    import subprocess
    import sys

    code = (f"import runpy, sys; sys.argv = ['x', '--help']\nrunpy.run_path({script('report')!r}, run_name='x')\n"
            "print(' '.join(sorted(m.split('.')[1] if '.' in m else '__init__' for m in sys.modules "
            "if m == 'transferlab' or m.startswith('transferlab.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == modules_loaded(ROOT / script("report"), lazy=False)
    assert modules_loaded(ROOT / script("report"), lazy=False) < modules_loaded(ROOT / script("report"))


LOADS = """import runpy, sys
sys.argv = [{script!r}, "--threads", "1"]
runpy.run_path(sys.argv[0], run_name="__main__")
print(" ".join(m for m in ("torch", "torchvision", "sklearn", "scipy.stats", "matplotlib", "dvclive") if m in sys.modules))"""


@pytest.mark.parametrize("stage, heavy", [("download", ""), ("split", ""), ("train_head", "sklearn scipy.stats"),
                                          ("evaluate_probe", "sklearn scipy.stats"), ("report", "matplotlib")])
def test_a_stage_imports_only_what_it_uses(trained_project, stage, heavy):
    """Start-up: no torch where no network runs, no plotting or tracking where nothing is drawn or logged, no
    scipy.stats (a second to import) where no test is computed."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LOADS.format(script=script(stage))], cwd=trained_project,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == heavy


@pytest.mark.parametrize("stage, record", [("frozen_cache", "results/frozen/meta.json"),
                                           ("finetune", "results/finetune/summary.json"),
                                           ("visualize", "results/visualize/summary.json")])
def test_a_stage_switched_off_leaves_its_record_without_loading_torch(tmp_path, stage, record):
    """The switch is read before the stage's module is loaded (DVC runs a switched-off stage whose inputs
    changed: it writes its 'skipped' record in about a second, not after torch's import)."""
    import json
    import subprocess
    import sys

    write_params(tmp_path / "params.yaml", finetune={"enabled": False}, visualize={"enabled": False})
    out = subprocess.run([sys.executable, "-c", LOADS.format(script=str(ROOT / script(stage)))], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == ""
    assert json.loads((tmp_path / record).read_text())["skipped"] is True
