"""The pipeline on a real one-node SLURM cluster (Debian's slurm-wlm and munge, started by a fixture): every job
through sbatch, the results those of the same stages run in this process. A file of its own: its minutes are mostly
jobs waiting on each other and on the executor plugin's status checks, so pytest-xdist runs it beside the other
engine files."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_project, engine_env, free_port, run, run_stages, set_param, snakemake_jobs
from PIL import Image

from transferlab.pipeline.stages import TABLE

pytestmark = pytest.mark.engine


LOCAL = {"download", "split", "shard_rows", "sweep_aggregate", "report"}  # the Snakefile's localrules: no job of their own
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node cluster on this machine (partition `cpu`, every core, memory not a consumable; no accounting
    database, so `squeue` tells the executor plugin each job's state: slurmctld keeps finished jobs for MinJobAge),
    configured in /etc/slurm/slurm.conf; stopped and its configuration removed afterwards."""
    missing = [name for name in NEEDED if not _which(name)]
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge ({', '.join(missing)} not found; .ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("the one-node cluster's daemons run as root (as CI does)")
    conf = Path("/etc/slurm/slurm.conf")  # where srun in a job looks (the job step plugin drops SLURM_CONF)
    if conf.exists():
        pytest.skip(f"{conf} exists: the test starts its own cluster only on a machine that has none")
    where = tmp_path_factory.mktemp("slurm")
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 9 // 10  # what slurmd finds
    conf.parent.mkdir(exist_ok=True)
    conf.write_text("\n".join([
        "ClusterName=transferlab", "SlurmctldHost=localhost", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        f"StateSaveLocation={where}/state", f"SlurmdSpoolDir={where}/spool",
        f"SlurmctldPidFile={where}/slurmctld.pid", f"SlurmdPidFile={where}/slurmd.pid",
        f"SlurmctldLogFile={where}/slurmctld.log", f"SlurmdLogFile={where}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none", "ReturnToService=2",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt", f"JobCompLoc={where}/jobs.txt", "MinJobAge=3600",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
    for sub in ("state", "spool"):
        (where / sub).mkdir()
    started = []
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:  # no munged answering yet
        Path("/run/munge").mkdir(exist_ok=True)
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
        subprocess.run([_which("munged"), "--force"], check=True)
        started.append("munged")
    subprocess.run([_which("slurmctld"), "-c", "-f", str(conf)], check=True)
    subprocess.run([_which("slurmd"), "-N", "localhost", "-f", str(conf)], check=True)
    deadline = time.monotonic() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            pytest.fail("the one-node cluster did not come up:\n" + (where / "slurmctld.log").read_text()[-3000:]
                        + (where / "slurmd.log").read_text()[-3000:])
        time.sleep(0.5)
    yield where
    subprocess.run(["scontrol", "shutdown"], capture_output=True)
    conf.unlink()
    if started:
        subprocess.run(["pkill", "-x", "munged"])


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tmp_path_factory):
    """Main pipeline and sweep (tiny data, extraction and the frozen blocks in 2 shards each) under
    `snakemake --profile profiles/slurm-cpu`, and the same stages run in this process while the cluster works (its
    jobs mostly wait, on each other and on the plugin's status checks): (cluster project, local project, output)."""
    where = tmp_path_factory.mktemp("sharded")
    for name in ("cluster", "local"):
        (where / name).mkdir()
    cluster, local = copy_project(where / "cluster"), copy_project(where / "local")
    for project in (cluster, local):
        set_param(project, "visualize", "enabled", False)
        set_param(project, "features", "shards", 2)
    submitting = subprocess.Popen(
        ["snakemake", "--profile", "profiles/slurm-cpu", "--slurm-no-account", "--max-threads", "1",
         "--default-resources", "slurm_partition=cpu", "mem_mb=1000", "runtime=30",
         "--slurm-init-seconds-before-status-checks", "1", "--slurm-status-command", "squeue", "--latency-wait", "5",
         "--retries", "0"], cwd=cluster, env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_stages(local, only=tuple(stage for stage in TABLE if stage not in ("export", "report")))  # what is compared
    output = submitting.communicate(timeout=900)[0]
    assert submitting.returncode == 0, output[-4000:]
    return cluster, local, output


def test_the_pipeline_runs_as_sbatch_jobs_with_the_local_results(slurm_cluster, cluster_run):
    """Snakemake submits every job with sbatch but those of its local rules (slurmctld's records, `squeue -t all`,
    and its job-completion log list each other rule's job, completed), and the metrics and features are byte for
    byte those of the same stages run in this process."""
    cluster, local, output = cluster_run
    jobs = snakemake_jobs(output)
    assert jobs == {"download", "split", "shard_rows", "extract_shard", "extract", "train_head", "evaluate_probe",
                    "frozen_cache_shard", "frozen_cache", "finetune", "evaluate_finetune", "export", "sweep_extract",
                    "sweep_frozen", "sweep_point", "sweep_aggregate", "report"}, output[-3000:]
    submitted = output.count("has been submitted with SLURM jobid")
    records = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True,
                             check=True).stdout.split()
    completed = [line for line in records if "|COMPLETED|" in line]
    assert submitted == len(completed) == output.count("rule ") - output.count("localrule ") > len(jobs - LOCAL), records
    assert {line.split("|")[2].removeprefix("rule_").split("_wildcards")[0] for line in completed} == jobs - LOCAL
    assert set(re.findall(r"^local(?:rule|checkpoint) (\w+):", output, re.M)) == LOCAL | {"all"}  # in Snakemake's process
    assert (slurm_cluster / "jobs.txt").read_text().count("JobState=COMPLETED") == submitted
    for rel in ("results/features/train.npz", "results/features/test.npz", "results/metrics/probe.json",
                "results/metrics/finetune.json", "results/curve/metrics.json"):
        assert (cluster / rel).read_bytes() == (local / rel).read_bytes(), rel


def test_a_changed_image_re_runs_its_shard_alone(cluster_run):
    """The last training image of the sharded project changes: download and split run again, the checkpoint
    (shard_rows) rewrites both shards' records, and Snakemake, reading the shard jobs again after it, runs only
    shard 1 (here on this machine: which jobs run is Snakemake's choice, whatever the executor). Shard 0's files
    are left as they were, each shard's record is the checkpoint's, and the gathered features changed (that the
    gathered bytes are one job's after such a re-run, frozen cache too: tests/test_features_head.py,
    tests/test_frozen.py)."""
    cluster = cluster_run[0]
    last = pd.read_csv(cluster / "data/splits/train.csv")["path"].iloc[-1]  # train rows 8-11 are shard 1's
    image = cluster.parent / "images" / last
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, quality=90)
    shard_zero = sorted((cluster / "results/shards/extract/0").glob("[!.]*"))  # not .snakemake_timestamp
    before = {path: path.stat().st_mtime_ns for path in shard_zero}
    features_before = (cluster / "results/features/train.npz").read_bytes()
    output = run(["snakemake", "--cores", "2", "extract"], cluster)
    output = output.stdout + output.stderr
    ran = re.findall(r"^local(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    wildcards: shard=(\d)", output, re.M)
    assert ran == [("extract_shard", "1")], output[-3000:]
    assert snakemake_jobs(output) == {"download", "split", "shard_rows", "extract_shard", "extract"}
    assert {path: path.stat().st_mtime_ns for path in shard_zero} == before and len(before) == 5  # and its record
    for shard in (0, 1):
        assert (json.loads((cluster / f"results/shards/extract/{shard}/meta.json").read_text())["shard"]
                == json.loads((cluster / f"results/shards/rows/{shard}.json").read_text()))
    assert (cluster / "results/features/train.npz").read_bytes() != features_before
