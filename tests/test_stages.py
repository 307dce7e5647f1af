"""The stage table against the code: dvc.yaml is its rendering, and each stage's module list is what its script
imports (Snakemake re-runs a rule when its script changes, not when an imported module does)."""
import pytest
from conftest import ROOT, write_params

from transferlab.pipeline import imports
from transferlab.pipeline.stages import TABLE, dvc_yaml, modules, runner, script


def test_dvc_yaml_is_generated_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), \
        "dvc.yaml is stale: python -m transferlab.pipeline.stages > dvc.yaml"


def loaded_by_script(stage: str, lazy: bool = True) -> set[str]:
    """The package's modules running the stage's script may load (without `lazy`: that starting it loads)."""
    return set(imports.closure(sorted(imports.imported(ROOT / script(stage), lazy)), lazy))


@pytest.mark.parametrize("stage", list(TABLE))
def test_stage_modules_are_what_the_script_and_its_run_import(stage):
    """A stage's modules (its dependencies in both engines) are read from the imports: the script's (the stage
    runner, nothing else), and those of the module of its run function (`stages.runner` loads it by name once the
    stage's switch is on)."""
    run = runner(stage)
    assert callable(run) and imports.imported(ROOT / script(stage)) == {"__init__", "pipeline", "pipeline.runner"}
    module = run.__module__.removeprefix("transferlab.")
    assert set(modules(stage)) == loaded_by_script(stage) | set(imports.closure([module]))
    assert len(modules(stage)) == len(set(modules(stage)))


def test_each_stage_lists_only_the_code_it_loads():
    """Editing the report's code re-runs the report alone; download and split load no network code; no stage but
    those that build a network loads the backbones' module."""
    assert [stage for stage in TABLE if "reporting.report" in modules(stage)] == ["report"]
    assert [stage for stage in TABLE if "reporting.visualize" in modules(stage)] == ["visualize"]
    for stage in ("inputs", "download", "split"):
        assert not {"finetuning.finetune", "finetuning.frozen", "probe.features", "probe.head", "reporting.report",
                    "inference.backends"} & set(modules(stage)), stage
    assert not {"inputs", "download", "train_head", "report"} & {s for s in TABLE if "models.backbones" in modules(s)}
    for family in ("models.family_torchvision", "models.family_timm"):  # params validation asks no family
        assert not {"download", "train_head", "report"} & {stage for stage in TABLE if family in modules(stage)}


def test_the_package_imports_run_one_way():
    """No import circle among the package's modules, also none through the families loaded by name (graphlib
    raises CycleError on one, naming it)."""
    import graphlib

    graph = {name: set(imports.imported(imports.file(name))) - {"__init__", name} for name in imports.modules()}
    graph[imports.FAMILIES] |= set(imports.closure([imports.FAMILIES])) - {imports.FAMILIES}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    assert order.index("core.errors") < order.index("settings.params") < order.index("pipeline.stages") \
        < order.index("pipeline.runner")


def test_the_import_walk_finds_what_python_loads():
    """The AST walk agrees with the interpreter on one stage (a subprocess importing its script)."""
    import subprocess
    import sys

    code = (f"import runpy, sys; sys.argv = ['x', '--help']\nrunpy.run_path({script('report')!r}, run_name='x')\n"
            "print(' '.join(sorted(m.removeprefix('transferlab.') if '.' in m else '__init__' for m in sys.modules "
            "if m == 'transferlab' or m.startswith('transferlab.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(out.stdout.split()) == loaded_by_script("report", lazy=False)
    assert set(imports.closure(["data.split"], lazy=False)) < set(imports.closure(["data.split"]))  # late: backbones


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
