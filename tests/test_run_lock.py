"""One run at a time over a project (case 10 of the bad-input issue): Snakemake, DVC's stages and `transferlab
predict` honour one lock, and the second comer refuses in one line naming the first."""
import fcntl
import json
import os

import pytest

from transferlab.pipeline import run_lock
from transferlab.pipeline.run_lock import RunInProgress


def test_a_second_run_is_refused_naming_the_first(tmp_path):
    first = run_lock.acquire(tmp_path, "snakemake --cores 2")
    with pytest.raises(RunInProgress, match=r"^.*logs/transferlab.lock: snakemake --cores 2 \(pid \d+, since "
                                            r"\d\d:\d\d:\d\d\) is running over this project; wait for it to finish"):
        run_lock.acquire(tmp_path, "dvc (train_head)")
    with pytest.raises(RunInProgress, match="snakemake --cores 2"):
        run_lock.acquire(tmp_path, "transferlab predict", shared=True)
    first.close()
    with run_lock.held(tmp_path, "dvc (train_head)"):
        pass


def test_predictions_share_the_lock_and_keep_runs_out(tmp_path):
    with run_lock.held(tmp_path, "transferlab predict", shared=True), \
            run_lock.held(tmp_path, "transferlab predict", shared=True):
        with pytest.raises(RunInProgress, match=r"transferlab predict \(reading results\) is running"):
            run_lock.acquire(tmp_path, "snakemake --cores 2")
    run_lock.acquire(tmp_path, "snakemake --cores 2").close()


def test_snakemake_waits_for_no_dvc_command(tmp_path):
    (tmp_path / ".dvc/tmp").mkdir(parents=True)
    assert run_lock.dvc_running(tmp_path) is None
    with open(tmp_path / run_lock.DVC_LOCK, "w") as repository:  # DVC holds it between its stages
        repository.write(" 4242\n")
        repository.flush()
        fcntl.flock(repository, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunInProgress, match=r"\.dvc/tmp/lock: dvc \(4242 holds \.dvc/tmp/lock\) is running"):
            run_lock.for_snakemake(tmp_path)
    (tmp_path / run_lock.DVC_RWLOCK).write_text(json.dumps(  # and lists a stage while it runs
        {"write": {"results/head": {"pid": os.getpid(), "cmd": "dvc repro"}}, "read": {}}))
    assert run_lock.dvc_running(tmp_path) == f"dvc (dvc repro, pid {os.getpid()})"
    (tmp_path / run_lock.DVC_RWLOCK).write_text(json.dumps({"write": {"results/head": {"pid": 2**22 + 1, "cmd": "x"}}}))
    run_lock.for_snakemake(tmp_path).close()  # a dead DVC's leftover entry holds nothing


def test_a_stage_under_dvc_refuses_while_snakemake_runs(tmp_path, monkeypatch):
    """A stage script as DVC runs it: one line naming the Snakemake run, exit 2, before any work."""
    import subprocess
    import sys

    from conftest import ROOT, make_tree, write_params

    make_tree(tmp_path / "images", {"ant": 4, "bee": 4})
    write_params(tmp_path / "params.yaml", data={"dataset": "folder", "source": "images"},
                 model={"backbone": "resnet18", "weights": "none", "checkpoint": None})
    held = run_lock.acquire(tmp_path, "snakemake --cores 2")
    result = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/split.py")], cwd=tmp_path, text=True,
                            capture_output=True, env={**os.environ, "DVC_STAGE": "split"})
    held.close()
    assert result.returncode == 2
    assert ("transferlab split: error: logs/transferlab.lock: snakemake --cores 2 (pid " in result.stderr
            and "is running over this project" in result.stderr and "Traceback" not in result.stderr), result.stderr
    assert not (tmp_path / "data").exists()
