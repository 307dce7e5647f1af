"""The stage table against the code: dvc.yaml is its rendering, and each stage's module list is what its script
imports (Snakemake re-runs a rule when its script changes, not when an imported module does)."""
import json

import pytest
from conftest import ROOT, write_params

from transferlab.pipeline import imports
from transferlab.pipeline.render import dvc_yaml
from transferlab.pipeline.stages import TABLE, modules, runner, script
from transferlab.settings.params import defaults
from transferlab.settings.sections import Params


def test_dvc_yaml_is_generated_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(), \
        "dvc.yaml is stale: python -m transferlab.pipeline.render > dvc.yaml"


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
    # inputs loads them only where visualize names ImageNet classes: DVC runs it every time, Snakemake at parse time
    assert not {"download", "split", "train_head", "report", "sweep_aggregate"} & {
        s for s in TABLE if "models.backbones" in modules(s)}
    assert not {"finetuning.finetune", "finetuning.frozen"} & set(modules("sweep_aggregate"))
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
    inputs = "pipeline.adapters.inputs"  # loads the backbones late, where visualize names ImageNet classes
    assert set(imports.closure([inputs], lazy=False)) < set(imports.closure([inputs]))


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


DOMAIN = ("core", "settings", "data", "models", "inference", "probe", "finetuning", "evaluate", "reporting",
          "serve.export")


def test_no_domain_module_knows_the_pipeline():
    """The domain code takes and returns values: no module of it imports the pipeline layer (the stage table, the
    runner, the layout of files), also not late; each stage's adapter (pipeline/adapters/<stage>.py) does the I/O."""
    domain = [name for name in imports.modules() if name.split(".")[0] in DOMAIN or name in DOMAIN]
    assert len(domain) > 40
    knows = {name: sorted(m for m in imports.closure([name]) if m.startswith("pipeline")) for name in domain}
    assert {name: found for name, found in knows.items() if found} == {}


def test_every_stage_has_its_adapter_named_for_it():
    """A newcomer finds any stage's work from the folder names: pipeline/adapters/<stage>.py, nothing else there."""
    folder = imports.file("pipeline.adapters").parent
    assert sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__") == sorted(TABLE)
    assert all(callable(runner(stage)) for stage in TABLE)


def test_a_stage_depends_on_its_code_through_one_record_rewritten_only_when_the_content_changes(tmp_path):
    """Snakemake's job lists one code record instead of ~20 library files: written where missing, left alone (its
    time too) where the files' content is as recorded, rewritten for exactly the stages whose code holds a file
    whose content changed; a file touched without a change rewrites nothing."""
    import os
    import shutil

    from transferlab.pipeline import layout, render

    for name in ("src", "workflow"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert sorted(render.write_code_records(tmp_path)) == sorted([*TABLE, "shard_rows"][1:])  # not inputs
    record = tmp_path / layout.CODE_RECORD.format(name="report")
    assert set(json.loads(record.read_text())) == set(render.code_files()["report"])
    newest = max((tmp_path / file).stat().st_mtime for file in render.code_files()["report"])
    assert record.stat().st_mtime == newest  # a first record: as old as its newest file, outputs after it current
    edited = tmp_path / "src/transferlab/evaluate/curve.py"
    os.utime(edited, (1, 1))  # a checkout that touches a file's time, not its content
    assert render.write_code_records(tmp_path) == []
    edited.write_text(edited.read_text() + "\n# an edit\n")
    os.utime(edited, (1, 1))  # its content changed, its time set back: the record is rewritten, and newer
    assert render.write_code_records(tmp_path) == ["sweep_aggregate"] == [
        stage for stage in TABLE if "evaluate.curve" in modules(stage)]
    assert (tmp_path / layout.CODE_RECORD.format(name="sweep_aggregate")).stat().st_mtime > newest
    inputs = render.snakemake_inputs("report", Params.from_mapping(defaults()).updated(sweep={"enabled": False}))
    assert inputs["code"] == layout.CODE_RECORD.format(name="report")
    assert not [path for value in inputs.values() for path in ([value] if isinstance(value, str) else value)
                if path.startswith("src/")]
