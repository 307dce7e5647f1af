# transferlab pipeline for Snakemake. Same stages, scripts and params.yaml as dvc.yaml.
# Run from the project root:  snakemake --cores 2
# `snakemake --lint` leaves two lints per rule, each on purpose (tests/test_engines.py allows these only):
# - "conda environment or container": every rule runs in the project's one environment (pip install -e .).
# - "uses variable PY from outside": PY is the interpreter Snakemake runs under; as a param it would re-run every rule.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from transferlab import params as P
from transferlab.layout import point_dir, points
from transferlab.stages import deps, params_for


configfile: "params.yaml"


try:
    config.update(P.validate(P.complete(config)))
    P.same_as_file(config)
except P.ParamsError as exc:
    raise WorkflowError(str(exc))

PY = sys.executable
SHELL = "{PY} {input.script} --threads {threads} > {log} 2>&1"


def lib(stage):
    """Library modules the stage's script imports: Snakemake re-runs on the script, not on its imports."""
    return deps(stage)[1:]


METHODS = ["probe"] + (["finetune"] if config["finetune"]["enabled"] else [])
VISUALIZE = ["results/visualize/summary.json"] if config["visualize"]["enabled"] else []
SWEEP = config["sweep"]["enabled"]
SWEEP_POINTS = [str(point_dir(Path("results"), *p) / "metrics.json") for p in points(config)] if SWEEP else []
SWEEP_CURVE = ["results/curve/summary.json"] if SWEEP else []


wildcard_constraints:
    backbone="[A-Za-z0-9_]+",
    fraction="[0-9]+[.][0-9]+",
    seed="[0-9]+",


rule all:
    input:
        expand("results/metrics/{method}.json", method=METHODS),
        "results/report.html",
        "results/model/model.onnx",


rule sweep:
    """The learning curve alone: snakemake --cores 8 sweep"""
    input:
        SWEEP_CURVE,


rule download:
    input:
        script="workflow/scripts/download.py",
        lib=lib("download"),
    output:
        index="data/index.csv",
        rejected="data/rejected.csv",
        dataset="data/dataset.json",
    params:
        stage=params_for(config, "download"),
    threads: 8
    log:
        "logs/download.log",
    benchmark:
        "logs/benchmarks/download.tsv"
    shell:
        SHELL


rule split:
    input:
        script="workflow/scripts/split.py",
        lib=lib("split"),
        index=rules.download.output.index,
        dataset=rules.download.output.dataset,
    output:
        train="data/splits/train.csv",
        val="data/splits/val.csv",
        test="data/splits/test.csv",
        summary="data/splits/summary.json",
    params:
        stage=params_for(config, "split"),
    threads: 1
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv"
    shell:
        SHELL


rule extract:
    input:
        script="workflow/scripts/extract.py",
        lib=lib("extract"),
        splits=rules.split.output,
    output:
        train="results/features/train.npz",
        val="results/features/val.npz",
        test="results/features/test.npz",
        meta="results/features/meta.json",
    params:
        stage=params_for(config, "extract"),
    threads: 8
    log:
        "logs/extract.log",
    benchmark:
        "logs/benchmarks/extract.tsv"
    shell:
        SHELL


rule train_head:
    input:
        script="workflow/scripts/train_head.py",
        lib=lib("train_head"),
        train=rules.extract.output.train,
        val=rules.extract.output.val,
    output:
        model="results/head/model.npz",
        search="results/head/search.csv",
        summary="results/head/summary.json",
    params:
        stage=params_for(config, "train_head"),
    threads: 2
    log:
        "logs/train_head.log",
    benchmark:
        "logs/benchmarks/train_head.tsv"
    shell:
        SHELL


rule evaluate_probe:
    input:
        script="workflow/scripts/evaluate.py",
        lib=lib("evaluate_probe"),
        model=rules.train_head.output.model,
        features=[rules.extract.output.train, rules.extract.output.val, rules.extract.output.test],
    output:
        metrics="results/metrics/probe.json",
        predictions="results/eval/probe/predictions.csv",
        per_class="results/eval/probe/per_class.csv",
        confusion="results/eval/probe/confusion_matrix.csv",
    params:
        stage=params_for(config, "evaluate_probe"),
    threads: 2
    log:
        "logs/evaluate_probe.log",
    benchmark:
        "logs/benchmarks/evaluate_probe.tsv"
    shell:
        "{PY} {input.script} --method probe --threads {threads} > {log} 2>&1"


rule finetune:
    input:
        script="workflow/scripts/finetune.py",
        lib=lib("finetune"),
        probe=rules.train_head.output.model,
        splits=rules.split.output,
    output:
        model="results/finetune/model.pt",
        history="results/finetune/history.csv",
        summary="results/finetune/summary.json",
    params:
        stage=params_for(config, "finetune"),
    threads: 8
    log:
        "logs/finetune.log",
    benchmark:
        "logs/benchmarks/finetune.tsv"
    shell:
        SHELL


rule evaluate_finetune:
    input:
        script="workflow/scripts/evaluate.py",
        lib=lib("evaluate_finetune"),
        model=rules.finetune.output.model,
        summary=rules.finetune.output.summary,
        probe=rules.evaluate_probe.output.predictions,
        splits=rules.split.output,
    output:
        metrics="results/metrics/finetune.json",
        predictions="results/eval/finetune/predictions.csv",
        per_class="results/eval/finetune/per_class.csv",
        confusion="results/eval/finetune/confusion_matrix.csv",
    params:
        stage=params_for(config, "evaluate_finetune"),
    threads: 8
    log:
        "logs/evaluate_finetune.log",
    benchmark:
        "logs/benchmarks/evaluate_finetune.tsv"
    shell:
        "{PY} {input.script} --method finetune --threads {threads} > {log} 2>&1"


rule report:
    input:
        script="workflow/scripts/report.py",
        lib=lib("report"),
        template="workflow/report/report.html.j2",
        dataset=rules.download.output.dataset,
        rejected=rules.download.output.rejected,
        splits=rules.split.output.summary,
        meta=rules.extract.output.meta,
        head=rules.train_head.output.summary,
        visualize=VISUALIZE,
        curve=SWEEP_CURVE,
        evaluations=list(rules.evaluate_probe.output)
        + (list(rules.evaluate_finetune.output) + [rules.finetune.output.history, rules.finetune.output.summary]
           if config["finetune"]["enabled"] else []),
    output:
        html=report("results/report.html", caption="workflow/report/caption.rst", category="Report"),
        confusion=report("results/report/confusion.png", category="Figures"),
        per_class=report("results/report/per_class.png", category="Figures"),
        learning=report("results/report/learning_curves.png", category="Figures"),
        reliability=report("results/report/reliability.png", category="Figures"),
    params:
        stage=params_for(config, "report"),
    threads: 1
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    shell:
        SHELL


rule export:
    """The chosen classifier as ONNX with labels, preprocessing and its model card: results/model/"""
    input:
        script="workflow/scripts/export.py",
        lib=lib("export"),
        template="workflow/report/model_card.md.j2",
        dataset=rules.download.output.dataset,
        splits=rules.split.output,
        meta=rules.extract.output.meta,
        probe=rules.train_head.output.model,
        metrics=expand("results/metrics/{method}.json", method=METHODS),
        model=rules.finetune.output.model if config["finetune"]["enabled"] else [],
    output:
        model="results/model/model.onnx",
        labels="results/model/labels.json",
        preprocessing="results/model/preprocessing.json",
        summary="results/model/summary.json",
        card=report("results/model/model_card.md", caption="workflow/report/model_caption.rst", category="Model"),
    params:
        stage=params_for(config, "export"),
    threads: 8
    log:
        "logs/export.log",
    benchmark:
        "logs/benchmarks/export.tsv"
    shell:
        SHELL


rule visualize:
    input:
        script="workflow/scripts/visualize.py",
        lib=lib("visualize"),
        splits=rules.split.output,
        probe=rules.train_head.output.model,
        model=rules.finetune.output.model if config["finetune"]["enabled"] else [],
    output:
        summary="results/visualize/summary.json",
        ideal=report("results/visualize/ideal_with_tv.png", category="What the network knows"),
        ideal_no_tv=report("results/visualize/ideal_without_tv.png", category="What the network knows"),
        maps=report("results/visualize/feature_maps.png", category="What the network knows"),
    params:
        stage=params_for(config, "visualize"),
    threads: 8
    log:
        "logs/visualize.log",
    benchmark:
        "logs/benchmarks/visualize.tsv"
    shell:
        SHELL


rule sweep_extract:
    """Features of every image for one backbone: computed once, shared by all fractions and seeds."""
    input:
        script="workflow/scripts/sweep_extract.py",
        lib=lib("sweep_extract"),
        splits=rules.split.output,
        dataset=rules.download.output.dataset,
    output:
        train="results/sweep/{backbone}/features/train.npz",
        val="results/sweep/{backbone}/features/val.npz",
        test="results/sweep/{backbone}/features/test.npz",
        meta="results/sweep/{backbone}/features/meta.json",
    params:
        stage=params_for(config, "sweep_extract"),
    threads: 8
    log:
        "logs/sweep/{backbone}/extract.log",
    benchmark:
        "logs/benchmarks/sweep/{backbone}/extract.tsv"
    shell:
        "{PY} {input.script} --backbone {wildcards.backbone} --threads {threads} > {log} 2>&1"


rule sweep_point:
    """Probe and fine-tune on one seeded training subsample; independent points run in parallel."""
    input:
        script="workflow/scripts/sweep_point.py",
        lib=lib("sweep_point"),
        splits=rules.split.output,
        dataset=rules.download.output.dataset,
        features=rules.sweep_extract.output,
    output:
        metrics="results/sweep/{backbone}/{fraction}/{seed}/metrics.json",
    params:
        stage=params_for(config, "sweep_point"),
    threads: 2
    log:
        "logs/sweep/{backbone}/{fraction}/{seed}.log",
    benchmark:
        "logs/benchmarks/sweep/{backbone}/{fraction}/{seed}.tsv"
    shell:
        "{PY} {input.script} --backbone {wildcards.backbone} --fraction {wildcards.fraction} --seed {wildcards.seed}"
        " --threads {threads} > {log} 2>&1"


rule sweep_aggregate:
    input:
        script="workflow/scripts/sweep_aggregate.py",
        lib=lib("sweep_aggregate"),
        points=SWEEP_POINTS,
    output:
        summary="results/curve/summary.json",
        points="results/curve/points.csv",
        curve="results/curve/curve.csv",
        metrics="results/curve/metrics.json",
        plot=report("results/curve/curve.png", category="Learning curve"),
    params:
        stage=params_for(config, "sweep_aggregate"),
    threads: 1
    log:
        "logs/sweep_aggregate.log",
    benchmark:
        "logs/benchmarks/sweep_aggregate.tsv"
    shell:
        SHELL
