"""Both engines on a tiny project copy: same outputs, no-op re-runs, and only the right stages re-run."""
import json
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import yaml
from conftest import ROOT, copy_project, dvc_changed, dvc_ran, dvc_stages_ran, git_dvc_init, run, set_param, snakemake_jobs

from transferlab.finetuning import tuning

# pytest-xdist runs this file's tests in one worker, in order (--dist loadfile): they change the two projects in
# turn. Engine tests with a project of their own are in tests/test_slurm.py and tests/test_engines_alone.py, which
# the other worker takes.
pytestmark = pytest.mark.engine


def dvc_stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def run_engine(engine: str, dest) -> tuple:
    """The project (a clone: a git repository with the shipped .dvc/) run by `engine`, again (nothing to do), then
    by the other engine, as the README says: nothing in between (a Snakemake run records its outputs for DVC
    itself)."""
    if engine == "snakemake":
        git_dvc_init(dest)
        first = run(["snakemake", "--cores", "2"], dest)
        again = run(["snakemake", "--cores", "2"], dest)
        other = run(["dvc", "repro"], dest)
    else:
        git_dvc_init(dest)
        first = run(["dvc", "repro"], dest)
        again = run(["dvc", "repro"], dest)
        other = run(["snakemake", "--cores", "2"], dest)
    return dest, first.stdout + first.stderr, again.stdout + again.stderr, other.stdout + other.stderr


def on_both(check, projects) -> list:
    """`check(project)` on each project at once (two independent copies: their commands are mostly start-up)."""
    with ThreadPoolExecutor(len(projects)) as pool:
        return list(pool.map(check, projects))


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    """One tiny project run by Snakemake and an identical one run by DVC, side by side; then each by the other
    engine (`run_engine`). The suite's only two full pipeline runs (tests/test_slurm.py runs Snakemake's shards)."""
    engines = ("snakemake", "dvc")
    copies = [copy_project(tmp_path_factory.mktemp(engine)) for engine in engines]
    return dict(zip(engines, on_both(lambda pair: run_engine(*pair), list(zip(engines, copies)))))


def test_full_runs_then_noop(both_engines):
    sm_dir, sm_first, sm_again, _ = both_engines["snakemake"]
    dvc_dir, dvc_first, dvc_again, _ = both_engines["dvc"]
    stages = {"download", "split", "extract", "train_head", "evaluate_probe", "frozen_cache", "finetune",
              "evaluate_finetune", "export", "visualize", "sweep_extract", "sweep_frozen", "sweep_point",
              "sweep_aggregate", "report"}
    assert snakemake_jobs(sm_first) == stages and dvc_ran(dvc_first) == stages | {"inputs"}
    assert "Nothing to be done" in sm_again and not snakemake_jobs(sm_again)
    # DVC runs the check of the data and checkpoint outside the project every time, and nothing else
    assert dvc_ran(dvc_again) == {"inputs"} and "inputs: unchanged" in dvc_again
    for rel in ("results/metrics/probe.json", "results/metrics/finetune.json", "results/curve/metrics.json"):
        assert (sm_dir / rel).read_bytes() == (dvc_dir / rel).read_bytes(), f"{rel}: two fresh copies differ"
    for engine_dir in (sm_dir, dvc_dir):
        for method in ("probe", "finetune"):
            metrics = json.loads((engine_dir / f"results/metrics/{method}.json").read_text())
            predictions = pd.read_csv(engine_dir / f"results/eval/{method}/predictions.csv", dtype=str)
            right = (predictions["actual"] == predictions["predicted"]).mean()
            assert metrics["method"] == method and metrics["accuracy"] == pytest.approx(right, abs=1e-12)
        page = (engine_dir / "results/report.html").read_text()
        assert "Feature extraction vs fine-tuning" in page and "Ideal" in page
        assert json.loads((engine_dir / "results/visualize/summary.json").read_text())["model"] == "fine-tuned model"
        exported = json.loads((engine_dir / "results/model/summary.json").read_text())
        assert exported["check"]["top1_differences"] == 0 and (engine_dir / "results/model/model_card.md").exists()
    assert (sm_dir / "logs/extract.log").exists() and (sm_dir / "logs/benchmarks/extract.tsv").exists()


def test_each_engine_shows_a_long_stage_s_progress_on_the_console(both_engines):
    """The status lines (progress.py) of extract and the fine-tune reach each engine's console output, not only
    the rule's log: at the start and the end of each bar (and every 10 s between, tests/test_progress.py)."""
    for engine in ("snakemake", "dvc"):
        console = both_engines[engine][1]
        assert re.search(r"^\S+ \[extract\] extract train: 0/12 img \(0 %\) · 00:00 elapsed$", console, re.M), engine
        assert re.search(r"^\S+ \[extract\] extract test: 6/6 img \(100 %\)", console, re.M), engine
        assert re.search(r"^\S+ \[finetune\] [^\n]*: 1/1 epoch \(100 %\)", console, re.M), engine


def test_one_engine_after_the_other_reruns_nothing(both_engines):
    sm_dir, _, _, dvc_after_snakemake = both_engines["snakemake"]
    dvc_dir, _, _, snakemake_after_dvc = both_engines["dvc"]
    assert dvc_ran(dvc_after_snakemake) == {"inputs"}
    assert "Nothing to be done" in snakemake_after_dvc and not snakemake_jobs(snakemake_after_dvc)
    for project in (sm_dir, dvc_dir):
        assert dvc_changed(project) == set()
        dry = run(["snakemake", "-n", "--cores", "2"], project)
        assert "Nothing to be done" in dry.stdout + dry.stderr


def test_the_hand_over_to_dvc_leaves_every_output_as_snakemake_wrote_it(both_engines):
    """Recording Snakemake's outputs for DVC rewrites none of them: Snakemake takes a large input written after a
    job ran for a changed one, so a rewritten features file re-ran the head and all after it (a no-op run of
    the shipped params took minutes)."""
    project = both_engines["snakemake"][0]
    times = {path: path.stat().st_mtime_ns for folder in ("data", "results") for path in (project / folder).rglob("*")
             if path.is_file()}
    run([sys.executable, "-m", "transferlab.pipeline.handover"], project)
    assert {path: path.stat().st_mtime_ns for path in times} == times and dvc_changed(project) == set()


def test_dvc_caches_every_output_and_nothing_lands_in_git(both_engines):
    dvc_dir = both_engines["dvc"][0]
    for name, stage in dvc_stages().items():
        for out in stage["outs"]:
            if name == "inputs":  # the manifests stay in place while the check runs (their time is Snakemake's)
                assert list(out.values()) == [{"persist": True, "cache": False}], out
                continue
            assert isinstance(out, str), f"{name}: {out} (every output cached, so `dvc checkout` restores it)"
    tracked = run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], dvc_dir).stdout
    assert not [line for line in tracked.splitlines()
                if line.startswith("??") and line[3:].startswith(("results/", "data/"))]
    assert not (dvc_dir / "results/.gitignore").exists() and not (dvc_dir / "data/.gitignore").exists()


def test_snakemake_report_and_dvc_plots(both_engines):
    sm_dir, dvc_dir = both_engines["snakemake"][0], both_engines["dvc"][0]
    run(["snakemake", "--cores", "1", "--report", "snakemake-report.html"], sm_dir)
    assert (sm_dir / "snakemake-report.html").stat().st_size > 10_000
    assert "model_card.md" in (sm_dir / "snakemake-report.html").read_text()
    shown = run(["dvc", "plots", "show", "--json"], dvc_dir)
    plots = json.loads(shown.stdout)["data"]
    assert {"results/eval/probe/predictions.csv", "results/eval/finetune/predictions.csv", "Fine-tune loss",
            "Fine-tune accuracy", "Linear head C search"} <= set(plots)
    assert "val_loss" in json.dumps(plots["Fine-tune loss"])


def test_engines_produce_the_same_files(both_engines):
    a, b = both_engines["snakemake"][0], both_engines["dvc"][0]
    for rel in ("data/index.csv", "data/rejected.csv", "data/splits/train.csv", "data/splits/val.csv",
                "data/splits/test.csv"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for split in ("train", "val", "test"):
        rel = f"results/features/{split}.npz"
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    pa, pb = (pd.read_csv(d / "results/eval/probe/predictions.csv") for d in (a, b))
    assert (pa["predicted"] == pb["predicted"]).all()
    points = [pd.read_csv(d / "results/curve/points.csv").drop(columns="seconds") for d in (a, b)]
    pd.testing.assert_frame_equal(points[0], points[1], atol=1e-6)  # the learning curve's every point, both methods


def planned_then_restored(project, section, key, value) -> set[str]:
    """The jobs `snakemake -n` plans after one param change; the params then restored (Snakemake plans what a run
    would do to the job, so the run itself adds nothing that a planning test asks)."""
    text = (project / "params.yaml").read_text()
    set_param(project, section, key, value)
    try:
        planned = run(["snakemake", "-n", "--cores", "2"], project)
    finally:
        (project / "params.yaml").write_text(text)
    return snakemake_jobs(planned.stdout + planned.stderr)


def test_head_param_change_never_reruns_extraction(both_engines):
    # fine-tune warm-starts from the head, so it follows the head; download, split and extract do not re-run.
    # Both engines plan: `dvc status` names the stages that read head.C_grid, and DVC's dry run of the head and of
    # what follows (DVC re-runs a following stage where the head's outputs changed, as a new C grid changes them).
    sm_dir, dvc_dir = both_engines["snakemake"][0], both_engines["dvc"][0]
    expected = {"train_head", "evaluate_probe", "finetune", "evaluate_finetune", "export", "visualize", "sweep_point",
                "sweep_aggregate", "report"}
    assert planned_then_restored(sm_dir, "head", "C_grid", [0.5]) == expected
    text = (dvc_dir / "params.yaml").read_text()
    set_param(dvc_dir, "head", "C_grid", [0.5])
    try:
        changed = dvc_changed(dvc_dir)
        dry = run(["dvc", "repro", "--dry", "--downstream", "--force-downstream", "train_head"], dvc_dir)
    finally:
        (dvc_dir / "params.yaml").write_text(text)
    assert changed == {"train_head", "sweep_point", "report"}  # the sweep's points train heads too; the report shows C
    assert dvc_ran(dry.stdout + dry.stderr) == expected


def test_bad_params_fail_before_any_work(both_engines):
    sm_dir = both_engines["snakemake"][0]
    text = (sm_dir / "params.yaml").read_text()
    set_param(sm_dir, "model", "backbone", "resnet7")
    try:
        sm = run(["snakemake", "--cores", "2", "-n"], sm_dir, check=False)
        script = run([sys.executable, "workflow/scripts/extract.py"], sm_dir, check=False)
    finally:
        (sm_dir / "params.yaml").write_text(text)
    assert sm.returncode != 0 and "model.backbone" in sm.stdout + sm.stderr
    assert script.returncode == 2 and "model.backbone" in script.stderr


def test_bad_params_lose_nothing_and_dvc_checkout_restores_what_a_stage_took_away(both_engines):
    dvc_dir = both_engines["dvc"][0]
    text = (dvc_dir / "params.yaml").read_text()
    model = (dvc_dir / "results/finetune/model.pt").read_bytes()
    set_param(dvc_dir, "finetune", "lr", -1.0)
    try:
        failed = run(["dvc", "repro"], dvc_dir, check=False)
    finally:
        (dvc_dir / "params.yaml").write_text(text)
    assert failed.returncode != 0 and "finetune.lr" in failed.stdout + failed.stderr
    assert dvc_ran(failed.stdout + failed.stderr) == {"inputs"}  # refused by the first stage, before any work
    assert (dvc_dir / "results/finetune/model.pt").read_bytes() == model
    shutil.rmtree(dvc_dir / "results/finetune")  # as DVC leaves a stage that fails: its outputs removed
    run(["dvc", "checkout"], dvc_dir)
    assert (dvc_dir / "results/finetune/model.pt").read_bytes() == model
    assert dvc_changed(dvc_dir) == set()


def test_finetune_param_change_reruns_only_finetune(both_engines):
    # as `dvc exp run -S` writes it: a string PyYAML reads (the stages cast it: the exp-run test below runs them)
    planned = planned_then_restored(both_engines["snakemake"][0], "finetune", "lr", "3e-05")
    assert planned == {"finetune", "evaluate_finetune", "export", "visualize", "sweep_point", "sweep_aggregate",
                       "report"}


DROP_HASHES = "^(data|src|workflow|results)/[^:]*$"  # no dependency hash columns in `dvc exp show`


def _values(tree, key):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key and isinstance(v, list) and not any(isinstance(i, (dict, list)) for i in v):
                yield from v  # a grid's values
            elif k == key and not isinstance(v, (dict, list)):
                yield v
            else:
                yield from _values(v, key)
    elif isinstance(tree, list):
        for item in tree:
            yield from _values(item, key)


def test_dvc_exp_run_of_a_grid_reruns_only_finetune_and_its_rates_are_numbers(both_engines):
    project = both_engines["dvc"][0]
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    exp = run(["dvc", "exp", "run", "-S", "finetune.lr=[1e-5,3e-5]"], project)
    output = exp.stdout + exp.stderr
    assert dvc_ran(output) == {"inputs", "finetune", "evaluate_finetune", "export", "visualize", "sweep_point",
                               "sweep_aggregate", "report"}
    for unchanged in ("extract", "sweep_extract@resnet18", "train_head", "frozen_cache", "sweep_frozen@resnet18-0"):
        assert f"Stage '{unchanged}' didn't change" in output
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    lrs = list(_values(shown, "lr"))
    assert 1e-05 in lrs and 3e-05 in lrs and all(isinstance(v, float) for v in lrs), lrs
    written = yaml.safe_load((project / "params.yaml").read_text())["finetune"]["lr"]
    assert written == ["1e-05", "3e-05"]  # written as PyYAML reads strings: the params loader casts them
    summary = json.loads((project / "results/finetune/summary.json").read_text())
    assert summary["from_cache"] and summary["candidates"] == 4  # 2 rates × 2 augmentations, from the cache
    assert summary["searched"]["lr"] == [1e-05, 3e-05] and summary["lr"] in (1e-05, 3e-05)
    search = pd.read_csv(project / "results/finetune/search.csv")
    kept = tuning.scores(search)["val_log_loss"]
    assert set(search.loc[search["chosen"], "lr"]) == {summary["lr"]}
    assert kept[search.loc[search["chosen"], "candidate"].iloc[0]] == kept.min()
    live = [e["data"]["metrics"].get("results/finetune/live/metrics.json", {}).get("data", {})
            for row in shown for e in [row] + [e for e in row.get("experiments") or [] for e in e["revs"]]]
    assert any(m.get("chosen", {}).get("lr") == summary["lr"] for m in live)  # DVCLive's metrics in exp show
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    drawn = json.dumps(plots)  # DVC names each plot of the live folder by its file
    assert "results/finetune/live/plots/metrics/augment_none/lr_1e-05/val/loss.tsv" in drawn, sorted(plots)
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "--all", "--json"], project).stdout)
    accuracy = diff["results/metrics/finetune.json"]["accuracy"]
    assert isinstance(accuracy["old"], float) and isinstance(accuracy["new"], float)  # HEAD's read from the cache
    for row in shown:
        for experiment in [row] + [e for e in row.get("experiments") or [] for e in e["revs"]]:
            metrics = experiment["data"]["metrics"]
            assert isinstance(metrics["results/metrics/probe.json"]["data"]["accuracy"], float), experiment["rev"]
    readable = run(["dvc", "exp", "show", "--md", "--only-changed", "--drop", DROP_HASHES], project).stdout
    header = readable.splitlines()[0]
    # what changed (the fine-tune's metrics, DVCLive's chosen.*, the sweep's, finetune.lr), no hash columns
    assert "finetune.lr" in header and "chosen.lr" in header and "results/finetune " not in header
    assert header.count("|") < 24


def test_dvc_artifacts_get_delivers_the_exported_model(both_engines, tmp_path):
    project = both_engines["dvc"][0]
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "model", "--allow-empty"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "classifier@v0.1.0", "-m", "v0.1.0"],
        project)  # the tag `gto register classifier` makes
    run(["dvc", "artifacts", "get", str(project), "classifier", "-o", str(tmp_path / "model")], tmp_path)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "checksums.export.json", "labels.json", "model.onnx", "model_card.md", "preprocessing.json", "summary.json"]
    predicted = run([sys.executable, "-m", "transferlab.serve.cli", "predict", "--model-dir", str(tmp_path / "model"),
                     str(project.parent / "images" / "ant")], tmp_path)
    assert len(predicted.stdout.splitlines()) == 1 + 8


def test_sweep_reuses_the_main_features_and_cache_and_reports_the_curve(both_engines):
    sm_dir, sm_first, _, _ = both_engines["snakemake"]
    dvc_dir, dvc_first, _, _ = both_engines["dvc"]
    assert sm_first.count("rule sweep_extract:") == 1 and sm_first.count("rule sweep_point:") == 2
    assert sm_first.count("rule sweep_frozen:") == 1
    assert dvc_stages_ran(dvc_first).count("sweep_extract@resnet18") == 1
    assert dvc_stages_ran(dvc_first).count("sweep_frozen@resnet18-0") == 1
    assert sorted(n for n in dvc_stages_ran(dvc_first) if n.startswith("sweep_point")) == [
        "sweep_point@resnet18-0.5-0", "sweep_point@resnet18-1.0-0"]
    # resnet18 is model.backbone and seed 0 finetune.seed: the main stages' files, copied, nothing computed twice
    assert "the extract stage's features, copied" in (sm_dir / "logs/sweep/resnet18/extract.log").read_text()
    assert "frozen-prefix cache, copied" in (sm_dir / "logs/sweep/resnet18/frozen/0.log").read_text()
    assert "no extraction here" in (sm_dir / "logs/sweep/resnet18/0.5/0.log").read_text()
    assert "is the main pipeline's run" in (sm_dir / "logs/sweep/resnet18/1.0/0.log").read_text()
    for project in (sm_dir, dvc_dir):
        # the main cache's record, its compute time included: copied, not computed again (DVC may later check the
        # files out of its cache as copies, so the link itself need not survive)
        main, linked = (json.loads((project / f).read_text()) for f in ("results/frozen/meta.json",
                                                                         "results/sweep/resnet18/frozen/0/meta.json"))
        assert linked == main and main["cached"]
        point = json.loads((project / "results/sweep/resnet18/0.5/0/metrics.json").read_text())
        assert point["finetune"]["from_cache"]
        # fraction 1 with model.backbone and finetune.seed is the main run: its scores, read, not recomputed
        whole, tuned = (json.loads((project / f).read_text()) for f in ("results/sweep/resnet18/1.0/0/metrics.json",
                                                                        "results/metrics/finetune.json"))
        assert whole["finetune"]["accuracy"] == tuned["accuracy"] and whole["vs_probe"] == tuned["vs_probe"]
    # the main stages come first under Snakemake (priority), the sweep's points after them
    order = re.findall(r"^(?:local)?rule (\w+):", sm_first, re.M)
    assert order.index("evaluate_finetune") < order.index("sweep_point")
    for project in (sm_dir, dvc_dir):
        points = pd.read_csv(project / "results/curve/points.csv")
        assert set(zip(points["method"], points["fraction"])) == {(m, f) for m in ("probe", "finetune")
                                                                   for f in (0.5, 1.0)}
        assert points.set_index(["method", "fraction"])["train_images"].to_dict()[("probe", 0.5)] == 6
        page = (project / "results/report.html").read_text()
        assert "Learning curve" in page and 'id="curve-reading"' in page and "resnet18" in page


def test_one_more_fraction_computes_only_the_new_point(both_engines):
    sm_dir, dvc_dir = both_engines["snakemake"][0], both_engines["dvc"][0]
    text = (sm_dir / "params.yaml").read_text()
    set_param(sm_dir, "sweep", "fractions", [0.5, 1.0, 0.75])
    set_param(dvc_dir, "sweep", "fractions", [0.5, 1.0, 0.75])
    try:
        sm = run(["snakemake", "-n", "--cores", "2"], sm_dir)  # Snakemake plans; DVC's run makes the point
    finally:
        (sm_dir / "params.yaml").write_text(text)
    dv = run(["dvc", "repro"], dvc_dir)
    sm_out, dv_out = sm.stdout + sm.stderr, dv.stdout + dv.stderr
    assert snakemake_jobs(sm_out) == {"sweep_point", "sweep_aggregate", "report"}
    assert sm_out.count("rule sweep_point:") == 1 and "fraction=0.75" in sm_out
    assert dvc_stages_ran(dv_out) == ["inputs", "sweep_point@resnet18-0.75-0", "sweep_aggregate", "report"]
    assert sorted(pd.read_csv(dvc_dir / "results/curve/curve.csv")["fraction"].unique()) == [0.5, 0.75, 1.0]


def test_editing_one_module_plans_only_the_stages_that_load_it(both_engines):
    """Each stage depends on the modules its code loads, read from the imports: an edit to the report's module
    plans the report alone in both engines (it re-ran all 16 stages when every stage listed a common core). An
    edit to a backbone family plans no download or split; DVC, which compares what the re-run stages write,
    neither train_head nor the report (Snakemake plans what follows a stage it re-runs)."""
    def plans(project, module):
        path = project / "src/transferlab" / module
        before = path.read_text()
        path.write_text(before + "\n# an edit\n")
        try:
            return snakemake_jobs(run(["snakemake", "-n", "--cores", "2"], project).stdout), dvc_changed(project)
        finally:
            path.write_text(before)

    projects = [both_engines["snakemake"][0], both_engines["dvc"][0]]
    assert on_both(lambda p: plans(p, "reporting/report.py"), projects) == [({"report"}, {"report"})] * 2
    for planned, changed in on_both(lambda p: plans(p, "models/family_torchvision.py"), projects):
        assert "extract" in planned and not {"download", "split"} & planned
        assert "extract" in changed and not {"download", "split", "train_head", "report"} & changed


def test_readme_order_snakemake_then_dvc_exp_run_keeps_every_output(both_engines):
    """README's order as a new user follows it: command 1 (snakemake), then `dvc exp run -S finetune.lr=…`. DVC
    knows Snakemake's outputs (its run recorded them): it re-runs what the change reaches, deletes nothing it has
    no record of, and extracts nothing again. The baseline is restored afterwards (git, then dvc checkout)."""
    project = both_engines["snakemake"][0]
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project)
    report = project / "results/report.html"
    exp = run(["dvc", "exp", "run", "-S", "finetune.lr=3e-5"], project)
    output = exp.stdout + exp.stderr
    assert "No file hash info found" not in output
    assert dvc_ran(output) == {"inputs", "finetune", "evaluate_finetune", "export", "visualize", "sweep_point",
                               "sweep_aggregate", "report"}, output[-3000:]
    for unchanged in ("extract", "train_head", "frozen_cache", "sweep_extract@resnet18"):
        assert f"Stage '{unchanged}' didn't change" in output
    assert report.exists() and (project / "results/features/train.npz").exists()
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], project)
    run(["dvc", "checkout", "--force"], project)


def change_input(parent, what: str) -> Callable[[], None]:
    """Change one input outside a project copy (its images/ folder or its checkpoint); returns what undoes it."""
    from conftest import random_checkpoint

    images, checkpoint = parent / "images", parent / "weights/resnet18.pth"
    if what == "add an image":
        added = images / "ant/ant_new.jpg"
        shutil.copy(images / "ant/ant_0.jpg", added)
        return added.unlink
    changed = images / "bee/bee_1.jpg" if what == "change an image" else checkpoint
    before = changed.read_bytes()
    if what == "change an image":
        changed.write_bytes((images / "bee/bee_2.jpg").read_bytes())
    else:
        random_checkpoint(checkpoint, seed=1)
    return lambda: changed.write_bytes(before)


def test_inputs_are_versioned_in_both_engines(both_engines):
    """An image added, an image changed, the checkpoint replaced under its name: each time both engines plan
    exactly the stages that read it (Snakemake: and what follows; DVC: the stages whose dependency changed);
    with nothing changed, nothing. Runs last: it accepts the projects' state with `dvc commit` then
    `snakemake --touch`, and undoes each change before the next."""
    everything = {"download", "split", "extract", "train_head", "evaluate_probe", "frozen_cache", "finetune",
                  "evaluate_finetune", "export", "visualize", "sweep_extract", "sweep_frozen", "sweep_point",
                  "sweep_aggregate", "report"}
    reads_weights = {"extract", "frozen_cache", "finetune", "visualize", "sweep_extract", "sweep_frozen", "sweep_point"}
    plans = {"nothing": (set(), set()), "add an image": (everything, {"download"}),
             "change an image": (everything, {"download"}),
             "replace the checkpoint": (everything - {"download", "split"}, reads_weights)}

    def plans_of(project) -> dict[str, tuple[set[str], set[str]]]:
        run(["dvc", "commit", "-f"], project)  # accept the state as it is (DVC may rewrite files it caches,
        run(["snakemake", "--cores", "1", "--touch"], project)  # so Snakemake's times are set last)
        found = {}
        for what in plans:
            undo = change_input(project.parent, what) if what != "nothing" else None
            planned = run(["snakemake", "-n", "--cores", "2"], project)
            found[what] = (snakemake_jobs(planned.stdout + planned.stderr), dvc_changed(project))
            if undo and what != list(plans)[-1]:  # back to the accepted inputs: DVC's record holds them again,
                undo()
                run(["snakemake", "--cores", "1", "--touch"], project)  # and Snakemake's times follow them
        return found

    for found in on_both(plans_of, [both_engines["snakemake"][0], both_engines["dvc"][0]]):
        assert found == plans
