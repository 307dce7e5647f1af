"""Engine tests with a tiny project of their own (run by pytest-xdist beside tests/test_engines.py's): the
Snakefile's lints, the profiles' plans, a sweep over two backbone families planned by both, stages switched off in
both engines (on a timm backbone), DVC's cache through two remotes (a directory, SSH) and a fresh clone each,
DVC's queue of experiments (fine-tuning a timm backbone); the pipeline on a SLURM cluster is tests/test_slurm.py's."""
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    TIMM_CONVNEXT,
    copy_project,
    dvc_changed,
    dvc_ran,
    free_port,
    git_dvc_init,
    run,
    run_stages,
    set_param,
    snakemake_jobs,
)

pytestmark = pytest.mark.engine


def test_snakemake_lint_leaves_only_the_lints_the_snakefile_justifies(tmp_path):
    project = copy_project(tmp_path)
    lint = run(["snakemake", "--lint"], project, check=False)
    titles = set(re.findall(r"^    \* (.+?):$", lint.stdout + lint.stderr, re.M))
    assert titles == {"Specify a conda environment or container for each rule.",
                      "Shell command directly uses variable PY from outside of the rule"}


@pytest.mark.parametrize("profile", ["local", "slurm", "slurm-cpu"])
def test_profiles_dry_run(tmp_path, profile):
    project = copy_project(tmp_path)
    dry = run(["snakemake", "-n", "--profile", f"profiles/{profile}"], project)
    output = dry.stdout + dry.stderr
    assert f"Using profiles profiles/{profile} and workflow specific profile profiles/default" in output
    assert snakemake_jobs(output) == {"download", "split", "extract", "train_head", "evaluate_probe",
                                      "frozen_cache", "finetune", "evaluate_finetune", "export", "visualize",
                                      "sweep_extract", "sweep_frozen", "sweep_point", "sweep_aggregate", "report"}
    if profile == "slurm":  # GPU rules ask the cluster for a GPU, the others for the CPU partition
        assert re.search(r"rule sweep_point:.*?resources:[^\n]*slurm_partition=gpu[^\n]*gpu=1", output, re.S)
        assert re.search(r"rule split:.*?resources:[^\n]*slurm_partition=cpu", output, re.S)
    if profile == "slurm-cpu":  # every rule on the CPU partition (tests/test_slurm.py runs it on a real cluster)
        assert output.count("slurm_partition=cpu") == output.count("resources:") > 0 and "gpu=" not in output


def test_both_engines_plan_a_sweep_over_two_families(tmp_path):
    """A timm name holds a slash: Snakemake's wildcards and DVC's matrix both take it, the sweep's folders nest
    under results/sweep/timm/ (tests/test_backbones.py runs such a sweep stage by stage)."""
    project = copy_project(tmp_path)
    set_param(project, "sweep", "backbones", ["resnet18", TIMM_CONVNEXT["backbone"]])
    set_param(project, "sweep", "checkpoints", {TIMM_CONVNEXT["backbone"]: TIMM_CONVNEXT["checkpoint"]})
    planned = run(["snakemake", "-n", "--cores", "2", "-p"], project)
    output = planned.stdout + planned.stderr
    assert output.count("rule sweep_point:") == 4 and output.count("rule sweep_extract:") == 2
    assert "sweep_extract.py --backbone timm/convnext_atto" in output
    assert "results/sweep/timm/convnext_atto/features/train.npz" in output
    assert "results/sweep/timm/convnext_atto/0.5/0/metrics.json" in output
    git_dvc_init(project)
    status = run(["dvc", "status"], project).stdout  # every stage, nothing run yet: each named by its matrix values
    stages = re.findall(r"^(\S+):$", status, re.M)
    assert {"sweep_extract@timm/convnext_atto", "sweep_frozen@timm/convnext_atto-0",
            "sweep_point@timm/convnext_atto-0.5-0", "sweep_point@timm/convnext_atto-1.0-0"} <= set(stages)


SKIPPED = (("results/frozen/meta.json", "finetune.enabled: false"),
           ("results/finetune/summary.json", "finetune.enabled: false"),
           ("results/metrics/finetune.json", "finetune.enabled: false"),
           ("results/eval/finetune/skipped.json", "finetune.enabled: false"),
           ("results/visualize/summary.json", "visualize.enabled: false"),
           ("results/curve/summary.json", "sweep.enabled: false"))


def test_stages_switched_off_are_left_out_by_snakemake_marked_skipped_by_both_and_handed_over(tmp_path):
    """Snakemake plans no switched-off stage and leaves their 'skipped' records, so `dvc commit` finds every
    output and DVC then runs nothing; DVC, made to run the switched-off stages with their outputs gone, runs
    them, and they write the same records."""
    from transferlab.pipeline.render import dvc_outs
    from transferlab.pipeline.stages import TABLE

    project = copy_project(tmp_path)
    for section in ("finetune", "visualize", "sweep"):
        set_param(project, section, "enabled", False)
    for key, value in TIMM_CONVNEXT.items():  # a timm backbone, run by Snakemake (and DVC, below)
        set_param(project, "model", key, value)
    planned = snakemake_jobs(run(["snakemake", "-n", "--cores", "2"], project).stdout)
    assert planned == {"download", "split", "extract", "train_head", "evaluate_probe", "export", "report"}
    ran = run(["snakemake", "--cores", "2"], project)
    assert snakemake_jobs(ran.stdout + ran.stderr) == planned
    git_dvc_init(project)
    run(["dvc", "commit", "-f"], project)
    assert dvc_changed(project) == set()
    assert dvc_ran(run(["dvc", "repro"], project).stdout) == {"inputs"}
    switched_off = [name for name, stage in TABLE.items() if stage.enabled_by]  # in the order they run
    for name in switched_off:
        for out in dvc_outs(name):
            for path in project.glob(out.split("{")[0].rstrip("/")):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    ran = dvc_ran(run(["dvc", "repro", "--force", "--single-item", *switched_off], project).stdout)
    assert ran == set(switched_off), ran  # (a plain `dvc repro` would restore them from its cache instead)
    for path, reason in SKIPPED:
        assert json.loads((project / path).read_text()) == {"skipped": True, "reason": reason}, path
    assert not (project / "results/finetune/model.pt").exists()
    assert json.loads((project / "results/model/summary.json").read_text())["method"] == "probe"
    page = (project / "results/report.html").read_text()
    assert "not run (visualize.enabled: false)" in page and "not run (sweep.enabled: false)" in page
    assert dvc_changed(project) == set()


@pytest.fixture(scope="module")
def handed_to_dvc(tmp_path_factory):
    """A project of its own (a timm backbone; visualize and the sweep off) trained in this process by its stage
    scripts, then handed to DVC as a Snakemake run hands it over (`dvc commit -f`) and committed."""
    project = copy_project(tmp_path_factory.mktemp("handed"))
    for section in ("visualize", "sweep"):
        set_param(project, section, "enabled", False)
    set_param(project, "sweep", "fractions", [1.0])  # one switched-off point for DVC to run, not two
    for key, value in TIMM_CONVNEXT.items():  # a timm backbone, fine-tuned below by DVC's queued experiments
        set_param(project, "model", key, value)
    run_stages(project)
    git_dvc_init(project)
    run(["dvc", "commit", "-f"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "handed to DVC"], project)
    assert dvc_changed(project) == set()
    return project


@pytest.fixture
def ssh_server(tmp_path, monkeypatch):
    """A real sshd on a free port of 127.0.0.1 (its own host key, the client's key authorised, in tmp_path) and a
    HOME whose known_hosts trusts it: yields (user@host:port, client key)."""
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists():
        pytest.skip("needs openssh-server (.ci/run installs it: apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the test's sshd serves root on 127.0.0.1, so it runs as root (as CI does)")
    pytest.importorskip("dvc_ssh", reason="needs dvc-ssh (pip install -e '.[test]')")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        f"PidFile {keys / 'sshd.pid'}\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        "StrictModes no\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    server = subprocess.Popen([str(sshd), "-D", "-e", "-f", str(keys / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) and time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()
        time.sleep(0.1)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {(keys / 'host.pub').read_text()}")
    monkeypatch.setenv("HOME", str(home))
    yield f"root@127.0.0.1:{port}", keys / "client"
    server.terminate()
    server.wait(10)


@pytest.mark.parametrize("remote", ["directory", "ssh"])
def test_the_cache_travels_through_a_dvc_remote(handed_to_dvc, tmp_path, remote, request):
    """`dvc push` to a remote (a local directory; ssh:// to a real sshd on localhost, with dvc-ssh), then a fresh
    clone and `dvc pull`: every output as the project made it, so `dvc repro` runs only the check of the inputs
    outside the project, and a new finetune.lr would re-run no extraction and no frozen blocks (DVC's plan;
    tests/test_engines.py runs such an experiment)."""
    project = handed_to_dvc
    if remote == "ssh":
        login, key = request.getfixturevalue("ssh_server")
        run(["dvc", "remote", "add", "-f", "-d", remote, f"ssh://{login}{tmp_path / 'store'}"], project)
        run(["dvc", "remote", "modify", remote, "keyfile", str(key)], project)
    else:
        run(["dvc", "remote", "add", "-f", "-d", remote, str(tmp_path / "store")], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", f"a {remote} remote"], project)
    run(["dvc", "push"], project)
    assert any((tmp_path / "store").rglob("*")), "nothing reached the remote"
    clone = project.parent / f"clone-{remote}"  # beside the project, so ../images and ../weights resolve as for it
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    assert not (clone / "results").exists()
    run(["dvc", "pull"], clone)
    for rel in ("results/features/train.npz", "results/frozen/train_strong.npy", "results/finetune/model.pt",
                "results/model/model.onnx", "results/report.html"):
        assert (clone / rel).read_bytes() == (project / rel).read_bytes(), rel
    assert dvc_ran(run(["dvc", "repro"], clone).stdout) == {"inputs"}
    set_param(clone, "finetune", "lr", 0.004)
    changed = dvc_changed(clone)
    assert "finetune" in changed and not changed & {"download", "split", "extract", "train_head", "frozen_cache"}


def test_queued_experiments_run_with_data_outside_the_project_and_are_compared(handed_to_dvc):
    """`dvc exp run --queue` (one that fails, a grid of two rates × two seeds, another data.seed), each up to the
    evaluation it changes (docs/stages.md's `dvc exp run -S … evaluate_finetune`), + `dvc queue start -j 2`: each
    experiment runs in a copy under .dvc/tmp/exps, where ../images would not resolve; it finds the project's data,
    and `dvc exp show` lists each one's metrics. Then `transferlab compare` reads their predictions from DVC's
    cache, and leaves out what an experiment did not re-run. A project of its own, so that the queue runs beside
    tests/test_engines.py."""
    project = handed_to_dvc
    run(["dvc", "exp", "run", "--queue", "-n", "broken", "-S", "finetune.lr=-1"], project)  # its inputs stage refuses
    run(["dvc", "exp", "run", "--queue", "-S", "finetune.lr=0.002,0.003", "-S", "finetune.seed=0,1",
         "evaluate_finetune"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "other-split", "-S", "data.seed=7", "evaluate_probe"], project)
    run(["dvc", "queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 900
    while len(run(["git", "for-each-ref", "refs/exps"], project).stdout.splitlines()) < 5:  # the finished ones
        assert time.monotonic() < deadline, run(["dvc", "queue", "status"], project).stdout
        time.sleep(2)  # git reads its refs in milliseconds: `dvc queue status` takes a second of CPU
    while re.search(r"\b(Queued|Running)\b", status := run(["dvc", "queue", "status"], project).stdout):
        assert time.monotonic() < deadline, status
        time.sleep(5)
    run(["dvc", "queue", "stop"], project, check=False)
    assert status.count("Success") == 5 and status.count("Failed") == 1, status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    found, revs = {}, {}
    for row in shown:
        for experiment in [e for e in row.get("experiments") or [] for e in e["revs"]]:
            data = experiment["data"]
            revs[experiment.get("name")] = experiment["rev"]
            finetuned = (data.get("metrics") or {}).get("results/metrics/finetune.json", {}).get("data", {})
            if "accuracy" in finetuned:  # not the failed experiment's
                found[data["params"]["params.yaml"]["data"]["finetune"]["lr"]] = finetuned["accuracy"]
    assert {0.002, 0.003} <= set(found) and all(isinstance(found[lr], float) for lr in (0.002, 0.003)), found
    # `transferlab compare`: the workspace and every finished experiment, their predictions read from DVC's cache
    compared = run(["transferlab", "compare", "--html", "compare.html"], project)
    out = compared.stdout
    assert "broken: failed, left out" in compared.stderr
    # other-split ran up to evaluate_probe: its fine-tune outputs are the workspace's, of the other split
    assert re.search(r"other-split: its finetune results were not made with its params \(data/splits/\S+ is newer\); "
                     "left out", compared.stderr), compared.stderr
    probe, finetune, both = (out[out.index(heading):] for heading in ("probe (baseline workspace",
                                                                          "finetune (baseline workspace", "both arms"))
    probe, finetune = ([line for line in text[:text.index(end)].splitlines() if line.startswith("| ")]
                       for text, end in ((probe, "finetune (baseline"), (finetune, "both arms")))
    # finetune.* is no probe param: the probe's runs on the project's split pool into one row, data.seed=7's apart
    assert probe[0].startswith("| data.seed | runs |") and probe[1].startswith("| 1 | 5 |"), out
    assert probe[2].startswith("| 7 | 1 |") and "unpaired: another test list (data.seed differs)" in probe[2], out
    assert finetune[0].startswith("| finetune.lr | runs | test accuracy |") and len(finetune) == 4, out
    assert finetune[1].endswith("| baseline |  |")
    pooled = sorted(row for row in finetune if row.startswith(("| 0.002 | 2 |", "| 0.003 | 2 |")))
    assert len(pooled) == 2 and all(re.search(r"\| [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \| [\d.e+-]+ \|$", row)
                                    for row in pooled), out
    assert len([line for line in both.splitlines() if line.startswith("| ")]) == 6  # header, the runs of both arms
    assert 'class="verdict" data-arm="finetune"' in (project / "compare.html").read_text()
    refused = run(["transferlab", "compare", "workspace", "broken"], project, check=False)
    assert refused.returncode == 2 and "broken: failed; compare it once it has run" in refused.stderr
    refused = run(["transferlab", "compare", "workspace", "no-such-experiment"], project, check=False)
    assert refused.returncode == 2 and "no-such-experiment: no such folder, experiment or git revision" in refused.stderr
    # an experiment whose predictions are not in the cache (pushed from elsewhere, never pulled)
    lock = yaml.safe_load(run(["git", "show", f"{revs['other-split']}:dvc.lock"], project).stdout)
    folder = next(out for out in lock["stages"]["evaluate_probe"]["outs"] if out["path"] == "results/eval/probe")
    cache = project / ".dvc" / "cache" / "files" / "md5"
    listing = json.loads((cache / folder["md5"][:2] / folder["md5"][2:]).read_text())
    md5 = next(entry["md5"] for entry in listing if entry["relpath"] == "predictions.csv")
    (cache / md5[:2] / md5[2:]).unlink()
    (project.parent / "empty-store").mkdir()  # a default remote without it (config.local outranks the remote tests')
    run(["dvc", "remote", "add", "-f", "-d", "--local", "empty", str(project.parent / "empty-store")], project)
    refused = run(["transferlab", "compare", "workspace", "other-split"], project, check=False)
    assert refused.returncode == 2 and refused.stderr.endswith(
        "other-split: results/eval/probe/predictions.csv is missing; dvc pull, or re-run the evaluate_probe stage\n")
    if importlib.util.find_spec("dvc_ssh"):  # a remote that does not answer
        run(["dvc", "remote", "add", "-f", "-d", "--local", "down", f"ssh://127.0.0.1:{free_port()}/store"], project)
        refused = run(["transferlab", "compare", "workspace", "other-split"], project, check=False)
        (said,) = refused.stderr.splitlines()  # one line: no traceback, no SSH client chatter
        assert refused.returncode == 2 and said.startswith(
            "transferlab compare: error: other-split: results/eval/probe/predictions.csv is not in DVC's cache and "
            "its remote failed (ConnectionRefusedError") and said.endswith("dvc pull once the remote answers")


HOLD_STAGES = """import os, time
from pathlib import Path
gate = os.environ.get("TRANSFERLAB_TEST_GATE")
if gate:
    from transferlab.pipeline import stages
    run = stages.execute
    def held(*args, **kwargs):
        Path(gate, "reached").touch()
        while not Path(gate, "open").exists():
            time.sleep(0.02)
        return run(*args, **kwargs)
    stages.execute = held
"""


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None and time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_params_edited_during_a_run_are_never_recorded_over_results_made_with_others(tmp_path):
    """Case 2 of the bad-input issue, in both engines. Snakemake: params.yaml edited while download runs; split,
    which starts after, computes with the values Snakemake planned (and records), says so, and once the file is
    set back nothing is to be done. DVC: the inputs stage is held once it has started (a sitecustomize on
    PYTHONPATH, the test's own) while model.checkpoint is edited; it refuses in one line and DVC records nothing
    for it (its record is still the one Snakemake's run handed over)."""
    from conftest import engine_env

    from transferlab.pipeline import layout

    project = copy_project(tmp_path)
    git_dvc_init(project)
    targets = list(layout.FILES["split"].values())
    snakemake = subprocess.Popen(["snakemake", "--cores", "1", *targets], cwd=project, env=engine_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(project / "logs/download.log", snakemake)
    set_param(project, "data", "seed", 7)
    output, _ = snakemake.communicate(timeout=300)
    assert snakemake.returncode == 0, output[-3000:]
    assert "data.seed changed since snakemake planned this run; this stage computes with the planned values" in \
        (project / "logs/split.log").read_text()
    assert "split" in snakemake_jobs(run(["snakemake", "-n", *targets], project).stdout)  # it recorded seed 1
    set_param(project, "data", "seed", 1)
    assert not snakemake_jobs(run(["snakemake", "-n", *targets], project).stdout)  # made with seed 1, as recorded

    gate = tmp_path / "gate"  # a sitecustomize holding each stage, once started, until the gate opens
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(HOLD_STAGES)
    dvc = subprocess.Popen(["dvc", "repro", "-s", "inputs"], cwd=project, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           env={**engine_env(), "PYTHONPATH": str(gate), "TRANSFERLAB_TEST_GATE": str(gate)})
    _wait_for(gate / "reached", dvc)  # the inputs stage has loaded params.yaml
    set_param(project, "model", "checkpoint", "../weights/../weights/resnet18.pth")
    (gate / "open").touch()
    output, _ = dvc.communicate(timeout=300)
    assert dvc.returncode != 0
    assert ("transferlab inputs: error: params.yaml: model.checkpoint changed while the inputs stage ran; DVC would "
            "record the new values over results made with the old: run dvc repro again") in output, output[-3000:]
    recorded = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["inputs"]["params"]["params.yaml"]
    assert recorded["model.checkpoint"] == "../weights/resnet18.pth"  # Snakemake's hand-over, not the edit


def test_the_engines_refuse_to_run_over_a_project_the_other_is_running(tmp_path):
    """Case 10 of the bad-input issue: one lock both engines honour (src/transferlab/pipeline/run_lock.py). Snakemake
    refuses while a DVC stage holds it (a dry run still plans); DVC's first stage refuses while Snakemake holds
    it; each names the other in one line, and nothing is run."""
    from transferlab.pipeline import run_lock

    project = copy_project(tmp_path)
    git_dvc_init(project)
    with run_lock.held(project, "dvc (finetune)"):
        refused = run(["snakemake", "--cores", "1"], project, check=False)
        planned = run(["snakemake", "-n", "--cores", "1"], project)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "logs/transferlab.lock: dvc (finetune) (pid " in output, output[-3000:]
    assert "is running over this project; wait for it to finish, or stop it" in output
    assert "download" in snakemake_jobs(planned.stdout) and not (project / "data/index.csv").exists()
    with run_lock.held(project, "snakemake --cores 2"):
        refused = run(["dvc", "repro"], project, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and ("transferlab inputs: error: logs/transferlab.lock: snakemake --cores 2 "
                                        "(pid ") in output, output[-3000:]
    assert dvc_ran(output) == {"inputs"} and not (project / "data/index.csv").exists()


def test_dvc_after_a_snakemake_run_it_has_no_record_of_refuses_before_deleting_anything(tmp_path):
    """Snakemake → DVC without loss. A Snakemake run records its outputs for DVC when it ends (dvc commit, quietly);
    where it could not (here: not yet a git repository, so DVC cannot run), it says so, and DVC's first stage then
    refuses, before DVC deletes anything, naming the command that records them."""
    from transferlab.pipeline import layout

    project = copy_project(tmp_path)
    targets = list(layout.FILES["split"].values())
    ran = run(["snakemake", "--cores", "1", *targets], project)
    assert "dvc commit -f failed, so DVC has no record of these outputs" in ran.stdout + ran.stderr
    git_dvc_init(project)
    index = (project / "data/index.csv").read_bytes()
    refused = run(["dvc", "repro"], project, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and ("transferlab inputs: error: dvc.lock: no record of the outputs Snakemake made "
                                        "for download, split, so DVC would delete them and run those stages again; "
                                        "record them first: dvc commit -f download split") in output, output[-3000:]
    assert (project / "data/index.csv").read_bytes() == index
    run(["dvc", "commit", "-f", "download", "split"], project)
    assert dvc_changed(project) >= {"extract"} and not dvc_changed(project) & {"download", "split"}
