# transferlab pipeline for Snakemake. Every rule reads the stage table (src/transferlab/pipeline/stages.py), the same
# table dvc.yaml is generated from: inputs, outputs (src/transferlab/pipeline/layout.py), params, the stage's code (one
# record of its files' content, src/transferlab/pipeline/render.py), and the switch that leaves a stage out. What is
# Snakemake's own is written here: threads, logs, the report.
# Run from the project root:  snakemake --cores 2
# `snakemake --lint` leaves two lints per rule, each on purpose (tests/test_engines.py allows these only):
# - "conda environment or container": every rule runs in the project's one environment (pip install -e .).
# - "uses variable PY from outside": PY is the interpreter Snakemake runs under; as a param it would re-run every rule.
import json
import os
import sys

from snakemake.exceptions import WorkflowError

from transferlab.core.errors import ParamsError
from transferlab.pipeline import handover, render, run_lock, shards, sources
from transferlab.pipeline import stages as S
from transferlab.pipeline.adapters import inputs as inputs_stage
from transferlab.settings import params as P

try:
    P.load("params.yaml")  # our one line for an empty, duplicated or invalid file, before Snakemake reads it
except ParamsError as exc:
    raise WorkflowError(str(exc))


configfile: "params.yaml"


try:
    PARAMS = P.validate(P.complete(config))  # the typed sections every rule below is planned from
    config.update(PARAMS.as_mapping())
    P.same_as_file(config)
    inputs_stage.check_names(PARAMS)
except ParamsError as exc:
    raise WorkflowError(str(exc))

# The params this run is planned with: its jobs compute with these, the values Snakemake records, whatever happens
# to params.yaml while it runs (src/transferlab/pipeline/runner.py); a cluster job's own Snakemake keeps what it was handed.
if workflow.is_main_process:  # and the manifests of the inputs and of each stage's code, rewritten where content changed
    sources.refresh(PARAMS, S.layout.files("inputs"))
    render.write_code_records()
    os.environ[P.PLANNED] = json.dumps(config)
else:
    os.environ.setdefault(P.PLANNED, json.dumps(config))

PY = sys.executable
SHARDS = S.shard_count(PARAMS, "extract")  # features.shards: extraction and the frozen blocks over this many jobs
MAIN = 10  # the main results come before the learning-curve sweep's points (Snakemake runs higher priority first)
FIGURES = dict(category="Figures")
KNOWS = dict(category="What the network knows")


# On a cluster these run in Snakemake's own process, not as jobs: download fetches (compute nodes often lack the
# network; a folder's index reads each file once), the other three only read lists and metrics.
localrules:
    download,
    split,
    sweep_aggregate,
    report,


def inputs(stage):
    """The stage's code record (Snakemake re-runs on a script, not on its imports) and its inputs."""
    return render.snakemake_inputs(stage, PARAMS)


def outputs(stage, **shown):
    """The stage's files; those named in `shown` also go into `snakemake --report`."""
    return {name: report(path, **shown[name]) if name in shown else path
            for name, path in S.layout.FILES[stage].items()}


def targets(*names):
    """The files of the named stages that are enabled."""
    return [path for name in names if S.enabled(PARAMS, name) for path in S.layout.FILES[name].values()]


HELD = {}  # the project's run lock, held from onstart to the end of this process


onstart:  # one run at a time over the project, DVC's included (src/transferlab/pipeline/run_lock.py)
    try:
        HELD["run"] = run_lock.for_snakemake()
    except run_lock.RunInProgress as exc:
        raise WorkflowError(str(exc))


onsuccess:
    if not workflow.dryrun:  # the records of stages switched off, then DVC told of the outputs (dvc commit)
        S.mark_disabled(PARAMS)
        handover.commit_for_dvc()


wildcard_constraints:
    backbone="(timm/)?[A-Za-z0-9_.]+",  # a torchvision name, or timm/<architecture[.tag]>
    fraction="[0-9]+[.][0-9]+",
    seed="[0-9]+",
    shard="[0-9]+",


rule all:
    input:
        targets("evaluate_probe", "evaluate_finetune", "report", "export"),


rule sweep:
    """The learning curve alone: snakemake --cores 8 sweep"""
    input:
        targets("sweep_aggregate"),


rule download:
    input:
        **inputs("download"),
    output:
        **outputs("download"),
    params:
        stage=S.params_for(PARAMS, "download"),
    threads: 8
    log:
        "logs/download.log",
    benchmark:
        "logs/benchmarks/download.tsv"
    shell:
        render.shell("download")


rule split:
    input:
        **inputs("split"),
    output:
        **outputs("split"),
    params:
        stage=S.params_for(PARAMS, "split"),
    threads: 1
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv"
    shell:
        render.shell("split")


rule extract:
    """Every image's features; with features.shards > 1, gathered from the shards' jobs (extract_shard)."""
    input:
        **inputs("extract"),
        shards=render.snakemake_shards("extract", PARAMS),
    output:
        **outputs("extract"),
    params:
        stage=S.params_for(PARAMS, "extract"),
    threads: 8 if SHARDS == 1 else 1
    priority: MAIN
    log:
        "logs/extract.log",
    benchmark:
        "logs/benchmarks/extract.tsv"
    shell:
        render.shell("extract", "" if SHARDS == 1 else "gather")


if SHARDS > 1:

    localrules:
        shard_rows,  # reads the split's lists: Snakemake's own process


    checkpoint shard_rows:
        """Each shard's record of its images (src/transferlab/pipeline/shards.py). A checkpoint: Snakemake reads the shards'
        jobs again once it has run, and a shard whose record has the checksum it had when the shard last ran (same
        rows, same image content) is not run again."""
        input:
            splits=S.layout.FILES["split"].values(),
            dataset=S.layout.FILES["download"]["dataset"],
            code=S.layout.CODE_RECORD.format(name="shard_rows"),
        output:
            shards.records(PARAMS),
        params:
            features=P.select(PARAMS, ["features.shards", "features.batch_size"]),
        log:
            "logs/shard_rows.log",
        run:
            shards.write(PARAMS, log=log[0])

    for sharded in [name for name, stage in S.TABLE.items() if stage.shards]:  # extract, frozen_cache

        rule:  # one shard of every split's images: a job each (an sbatch job under profiles/slurm), gathered by the
            # stage's own rule (extract, frozen_cache); kept, so that a change re-runs only the shards it reaches.
            # The split's files are ancient(): what of them the shard reads is in its record (shard_rows)
            name:
                f"{sharded}_shard"
            input:
                **render.snakemake_shard_inputs(sharded, PARAMS, ancient),
            output:
                directory(S.layout.SHARD_FOLDERS[sharded]),
            params:
                stage=S.params_for(PARAMS, sharded),
                script=S.script(sharded),
            threads: 8
            priority: MAIN
            log:
                f"logs/{sharded}/shard{{shard}}.log",
            benchmark:
                f"logs/benchmarks/{sharded}/shard{{shard}}.tsv"
            shell:
                render.shell(sharded, "shard")


rule train_head:
    input:
        **inputs("train_head"),
    output:
        **outputs("train_head"),
    params:
        stage=S.params_for(PARAMS, "train_head"),
    threads: 2
    priority: MAIN
    log:
        "logs/train_head.log",
    benchmark:
        "logs/benchmarks/train_head.tsv"
    shell:
        render.shell("train_head")


rule evaluate_probe:
    input:
        **inputs("evaluate_probe"),
    output:
        **outputs("evaluate_probe"),
    params:
        stage=S.params_for(PARAMS, "evaluate_probe"),
    threads: 2
    priority: MAIN
    log:
        "logs/evaluate_probe.log",
    benchmark:
        "logs/benchmarks/evaluate_probe.tsv"
    shell:
        render.shell("evaluate_probe")


rule frozen_cache:
    """The fine-tune's frozen blocks, run once over every view it trains and is scored on; with features.shards > 1,
    gathered from the shards' jobs (frozen_cache_shard)."""
    input:
        **inputs("frozen_cache"),
        shards=render.snakemake_shards("frozen_cache", PARAMS),
    output:
        **outputs("frozen_cache"),
    params:
        stage=S.params_for(PARAMS, "frozen_cache"),
    threads: 8 if SHARDS == 1 else 1
    priority: MAIN
    log:
        "logs/frozen_cache.log",
    benchmark:
        "logs/benchmarks/frozen_cache.tsv"
    shell:
        render.shell("frozen_cache", "" if SHARDS == 1 else "gather")


rule finetune:
    input:
        **inputs("finetune"),
    output:
        **outputs("finetune"),
    params:
        stage=S.params_for(PARAMS, "finetune"),
    threads: 8
    priority: MAIN
    log:
        "logs/finetune.log",
    benchmark:
        "logs/benchmarks/finetune.tsv"
    shell:
        render.shell("finetune")


rule evaluate_finetune:
    input:
        **inputs("evaluate_finetune"),
    output:
        **outputs("evaluate_finetune"),
    params:
        stage=S.params_for(PARAMS, "evaluate_finetune"),
    threads: 8
    priority: MAIN
    log:
        "logs/evaluate_finetune.log",
    benchmark:
        "logs/benchmarks/evaluate_finetune.tsv"
    shell:
        render.shell("evaluate_finetune")


rule report:
    input:
        **inputs("report"),
    output:
        **outputs(
            "report",
            html=dict(caption="workflow/report/caption.rst", category="Report"),
            confusion=FIGURES,
            per_class=FIGURES,
            learning=FIGURES,
            reliability=FIGURES,
            search=FIGURES,
        ),
    params:
        stage=S.params_for(PARAMS, "report"),
    threads: 1
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    shell:
        render.shell("report")


rule export:
    """The chosen classifier as ONNX with labels, preprocessing and its model card."""
    input:
        **inputs("export"),
    output:
        **outputs(
            "export",
            card=dict(caption="workflow/report/model_caption.rst", category="Model"),
        ),
    params:
        stage=S.params_for(PARAMS, "export"),
    threads: 8
    priority: MAIN
    log:
        "logs/export.log",
    benchmark:
        "logs/benchmarks/export.tsv"
    shell:
        render.shell("export")


rule visualize:
    input:
        **inputs("visualize"),
    output:
        **outputs(
            "visualize",
            ideal=KNOWS,
            ideal_no_tv=KNOWS,
            maps=KNOWS,
        ),
    params:
        stage=S.params_for(PARAMS, "visualize"),
    threads: 8
    log:
        "logs/visualize.log",
    benchmark:
        "logs/benchmarks/visualize.tsv"
    shell:
        render.shell("visualize")


rule sweep_extract:
    """Features of every image for one backbone: computed once, shared by all fractions and seeds (model.backbone's
    are the extract stage's, copied)."""
    input:
        **inputs("sweep_extract"),
    output:
        **outputs("sweep_extract"),
    params:
        stage=S.params_for(PARAMS, "sweep_extract"),
    threads: 8
    log:
        "logs/sweep/{backbone}/extract.log",
    benchmark:
        "logs/benchmarks/sweep/{backbone}/extract.tsv"
    shell:
        render.shell("sweep_extract")


rule sweep_frozen:
    """One (backbone, seed)'s frozen-prefix cache, shared by every fraction (the main one's, copied, where equal)."""
    input:
        **inputs("sweep_frozen"),
    output:
        **outputs("sweep_frozen"),
    params:
        stage=S.params_for(PARAMS, "sweep_frozen"),
    threads: 8
    log:
        "logs/sweep/{backbone}/frozen/{seed}.log",
    benchmark:
        "logs/benchmarks/sweep/{backbone}/frozen/{seed}.tsv"
    shell:
        render.shell("sweep_frozen")


rule sweep_point:
    """Probe and fine-tune on one seeded training subsample; independent points run in parallel."""
    input:
        **inputs("sweep_point"),
    output:
        **outputs("sweep_point"),
    params:
        stage=S.params_for(PARAMS, "sweep_point"),
    threads: 2
    log:
        "logs/sweep/{backbone}/{fraction}/{seed}.log",
    benchmark:
        "logs/benchmarks/sweep/{backbone}/{fraction}/{seed}.tsv"
    shell:
        render.shell("sweep_point")


rule sweep_aggregate:
    input:
        **inputs("sweep_aggregate"),
    output:
        **outputs(
            "sweep_aggregate",
            plot=dict(category="Learning curve"),
        ),
    params:
        stage=S.params_for(PARAMS, "sweep_aggregate"),
    threads: 1
    log:
        "logs/sweep_aggregate.log",
    benchmark:
        "logs/benchmarks/sweep_aggregate.tsv"
    shell:
        render.shell("sweep_aggregate")
