"""The stage table rendered for each workflow engine: the Snakefile's rule inputs and shell commands, each stage's
code record, and dvc.yaml (`python -m transferlab.pipeline.render > dvc.yaml`; tests/test_stages.py checks the file
equals the rendering).

Both engines re-run a stage when its code changes, not only its script. DVC lists the stage's script and library
files as deps, and compares their content. Snakemake would list them as inputs, compared by time, and print ~20
of them for every job: instead a job's input is one small record per stage, `layout.CODE_RECORD`, holding the
sha256 of each of those files. It is rewritten, at each parse, only where one changed, so editing a module re-runs
exactly the stages whose code loads it, and a checkout that only touches times re-runs nothing.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from transferlab.core.atomic import write_json_if_changed
from transferlab.core.fetch import file_digest
from transferlab.pipeline import imports, layout
from transferlab.pipeline.stages import (
    DATA,
    TABLE,
    deps,
    enabled,
    reference,
    script,
    shard_count,
    spans_points,
    stage_wildcards,
    unfilled_prefix,
)
from transferlab.settings.sections import Params

# The code of Snakemake's shard_rows checkpoint, run in its own process (shards.write), which is not a stage.
SHARD_ROWS_MODULES = ["pipeline.shards"]


def code_files() -> dict[str, list[str]]:
    """Each stage's script and library files (but the inputs stage's: Snakemake writes its manifests at parse
    time, no job), and the shard_rows checkpoint's library files."""
    return {**{stage: deps(stage) for stage in TABLE if stage != "inputs"},
            "shard_rows": imports.paths(imports.closure(SHARD_ROWS_MODULES))}


def write_code_records(root: Path | str = ".") -> list[str]:
    """Write each code record (`layout.CODE_RECORD`) whose files' content changed; the names rewritten. A record
    written for the first time (a fresh clone, a project DVC ran) gets the time of its newest file, as the files
    themselves would have had as inputs: outputs made after them are not taken for stale."""
    root, digests = Path(root), {}
    changed = []
    for name, files in code_files().items():
        path = root / layout.CODE_RECORD.format(name=name)
        first = not path.exists()
        record = {file: digests.setdefault(file, file_digest(root / file)) for file in files}
        if write_json_if_changed(path, record):
            changed.append(name)
            if first:
                newest = max((root / file).stat().st_mtime for file in files)
                os.utime(path, (newest, newest))
    return changed


def dvc_outs(stage: str) -> list[str]:
    """What DVC caches for a stage: the folders it owns as a whole, and its files outside them."""
    owned = layout.OWNED.get(stage, [])
    outs = [next((f for f in owned if path.startswith(f + "/")), path) for path in layout.FILES[stage].values()]
    return list(dict.fromkeys(outs))


def _input_templates(stage: str, value: str) -> list[str]:
    """An input as path templates; another stage's files keep only the wildcards this stage has."""
    ref = reference(value)
    if ref is None:
        return [value]
    source, name = ref
    paths = dvc_outs(source)
    if name:  # DVC tracks the output holding the file: a disabled stage's folder exists, its files may not
        file = layout.FILES[source][name]
        paths = [next(out for out in paths if file == out or file.startswith(out + "/"))]
    return [unfilled_prefix(p) for p in paths] if spans_points(stage, source) else paths


def snakemake_inputs(stage: str, params: Params) -> dict[str, Any]:
    """The rule's input: its code record (`write_code_records`), and the inputs of stages that are enabled
    (Snakemake leaves a disabled stage out), sweep points expanded over the grid where the rule has no wildcard for
    them."""
    out: dict[str, Any] = {"code": layout.CODE_RECORD.format(name=stage)}
    for name, value in TABLE[stage].inputs.items():
        ref = reference(value)
        if ref is None:
            out[name] = value
            continue
        source, file = ref
        if not enabled(params, source):
            continue
        paths = [layout.FILES[source][file]] if file else list(layout.FILES[source].values())
        if spans_points(stage, source):
            paths = [p.format(backbone=b, fraction=layout.label(f), seed=s) for p in paths
                     for b, f, s in layout.points(params)]
        out[name] = paths[0] if file and len(paths) == 1 else paths
    return out


def snakemake_shards(stage: str, params: Params) -> list[str]:
    """Every shard's folder: the input of the rule that gathers them (none where the stage is one job)."""
    count = shard_count(params, stage)
    return [layout.SHARD_FOLDERS[stage].format(shard=s) for s in range(count)] if count > 1 else []


def snakemake_shard_inputs(stage: str, params: Params, ancient: Callable[[Any], Any]) -> dict[str, Any]:
    """A shard job's input: the stage's, with its record (layout.SHARD_ROWS), and the dataset's and split's files
    flagged by Snakemake's `ancient`: what the shard reads of them is in the record, which Snakemake compares by
    checksum once the checkpoint writing it has run, so a split that re-runs re-runs only the shards it changed."""
    out = snakemake_inputs(stage, params)
    return {**out, **{name: ancient(out[name]) for name in DATA}, "rows": layout.SHARD_ROWS}


def shell(stage: str, part: str = "") -> str:
    """The rule's shell command: the stage script with its wildcards (`part`: "shard", one shard's job, or
    "gather", the job gathering them); its standard error (log lines, progress bars) to the rule's log, its
    standard output (a status line per long step, `progress.py`) to the console."""
    # A shard rule is defined in a loop, and Snakemake evaluates `shell:` when the job runs, where the loop's
    # variable holds its last value: its script comes from the rule's own params
    path = "{params.script}" if part == "shard" else script(stage)
    extra = "".join(f" --{w} {{wildcards.{w}}}" for w in stage_wildcards(stage))
    extra += {"": "", "shard": " --shard {wildcards.shard}", "gather": " --gather"}[part]
    return "{PY} " + path + extra + " --threads {threads} 2> {log}"


def _dvc(template: str) -> str:
    return re.sub(r"\{(\w+)\}", r"${item.\1}", template)


def dvc_stage(stage: str) -> dict[str, Any]:
    """One stage of dvc.yaml."""
    entry: dict[str, Any] = {}
    names = stage_wildcards(stage)
    if names:
        entry["matrix"] = {w: "${" + layout.WILDCARDS[w] + "}" for w in names}
    entry["cmd"] = " ".join(["python", script(stage)] + [f"--{w} ${{item.{w}}}" for w in names])
    inputs = [p for value in TABLE[stage].inputs.values() for p in _input_templates(stage, value)]
    entry["deps"] = deps(stage) + [_dvc(p) for p in dict.fromkeys(inputs)]
    entry["params"] = list(TABLE[stage].params)
    entry["outs"] = [_dvc(p) for p in dvc_outs(stage)]
    if stage == "inputs":  # DVC cannot see files outside the project: it runs the check every time, and what
        # follows only where a manifest changed. Left in place and uncached (DVC would copy it back from its
        # cache), an unchanged manifest keeps its time, so Snakemake re-runs nothing either (sources.py)
        entry["always_changed"] = True
        entry["outs"] = [{path: {"persist": True, "cache": False}} for path in entry["outs"]]
    return entry


def _file(stage: str, name: str) -> str:
    return layout.FILES[stage][name]


def dvc_yaml() -> str:
    """dvc.yaml as generated from the table, with the metrics, plots and artifact DVC shows."""
    history = _file("finetune", "history")
    document = {
        "stages": {name: dvc_stage(name) for name in TABLE},
        "artifacts": {"classifier": {
            "path": dvc_outs("export")[0], "type": "model",
            "desc": "The chosen classifier (frozen features + linear head, or the fine-tuned network) as one ONNX "
                    "graph, uint8 images in and class probabilities out, with labels.json, preprocessing.json and "
                    "model_card.md",
            "labels": ["image-classification", "transfer-learning", "onnx"]}},
        "metrics": [_file("evaluate_probe", "metrics"), _file("evaluate_finetune", "metrics"),
                    _file("sweep_aggregate", "metrics"), _file("finetune", "live")],
        "plots": [
            {"Learning curve": {"template": "scatter", "x": "train_images",
                                "y": {_file("sweep_aggregate", "points"): "accuracy"}}},
            {_file("evaluate_probe", "predictions"): {"template": "confusion", "x": "actual", "y": "predicted",
                                                    "title": "Frozen features + linear head - confusion matrix"}},
            {_file("evaluate_finetune", "predictions"): {"template": "confusion", "x": "actual", "y": "predicted",
                                                       "title": "Fine-tuned - confusion matrix"}},
            {"Fine-tune loss": {"x": "epoch", "y": {history: ["train_loss", "val_loss"]}}},
            {"Fine-tune accuracy": {"x": "epoch", "y": {history: ["train_accuracy", "val_accuracy"]}}},
            {"Linear head C search": {"x": "C", "y": {_file("train_head", "search"): ["train_accuracy",
                                                                                      "val_accuracy"]}}},
            {"Fine-tune learning-rate search (validation loss per epoch)": {
                "template": "scatter", "x": "lr", "y": {_file("finetune", "search"): ["val_loss"]}}},
            {"LR range test": {"x": "lr", "y": {_file("finetune", "range_test"): ["loss", "smoothed"]}}},
            {str(Path(_file("finetune", "live")).parent / "plots" / "metrics"): {"x": "step"}},
        ],
    }
    header = ("# Generated from the stage table in src/transferlab/pipeline/stages.py: edit the table, then run\n"
              "#   python -m transferlab.pipeline.render > dvc.yaml\n"
              "# (tests/test_stages.py checks this file equals the rendering). Every output is cached by DVC, metrics\n"
              "# and plots too: results/ and data/ stay out of git.\n")
    return header + yaml.safe_dump(document, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(dvc_yaml())
