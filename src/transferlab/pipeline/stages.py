"""The stage table: every stage's inputs, params, library modules and switch, read by both workflow engines.

The Snakefile reads it at parse time and dvc.yaml is generated from it (render.py); `runner.run_stage` hands each
stage's adapter its files from it (`io`) and decides, in one place, what a disabled stage leaves behind
(`execute`, `skip`). Outputs are in `layout.FILES`; every output is cached by DVC. Imports no torch.
"""
from __future__ import annotations

import importlib
import logging
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transferlab.core.atomic import write_json
from transferlab.pipeline import checks, imports, layout
from transferlab.settings.params import select
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


ADAPTERS = "pipeline.adapters"  # the stages' adapters, one module per stage, named for it


@dataclass(frozen=True)
class Stage:
    """What a stage reads and depends on; its work is `run(params, io)` in its adapter, pipeline/adapters/<stage>.py
    (`runner`: loaded once the stage's switch is found on, so a stage switched off leaves its record without
    loading torch).

    inputs: name → another stage ("split": all its files; "extract.meta": one) or a project file;
    enabled_by: the params switch that turns it off (then it leaves a 'skipped' record, see `skip`);
    shards: the params count of jobs Snakemake spreads its work over (layout.SHARD_FOLDERS; DVC runs it whole)."""

    inputs: dict[str, str]
    params: list[str]
    enabled_by: str | None = None
    shards: str | None = None


DATA = {"dataset": "download.dataset", "splits": "split"}
_WEIGHTS = {"checkpoint": "inputs.checkpoint"}  # the checkpoint's content: replaced under the same name, it re-runs
_SWEEP_WEIGHTS = {**_WEIGHTS, "sweep_checkpoints": "inputs.sweep_checkpoints"}  # and the sweep's other backbones'
_SWEEP_PARAMS = ["sweep.enabled", "sweep.checkpoints"]
# What the features depend on: not features.shards, which changes how the work is spread, not its result.
_FEATURE_PARAMS = ["model", "features.engine", "features.precision", "features.batch_size", "features.num_workers",
                   "features.train_views", "features.seed"]
# What the frozen prefix's activations depend on (not lr, head_lr, weight_decay, schedule, patience, batch_size).
_FROZEN_PARAMS = ["model", "features.engine", "features.batch_size", "features.num_workers", "finetune.enabled",
                  "finetune.unfreeze", "finetune.augment", "finetune.epochs", "finetune.seed", "finetune.cache",
                  "finetune.cache_max_gb"]

# The main pipeline's results: the sweep point that is the main run (model.backbone, fraction 1, finetune.seed) reads them.
_MAIN_RESULTS = {"main_head": "train_head.summary", "main_probe": "evaluate_probe.metrics",
                 "main_finetune": "finetune.summary", "main_evaluation": "evaluate_finetune.metrics"}

TABLE: dict[str, Stage] = {
    "inputs": Stage({}, ["data.source", "model.checkpoint", "sweep.checkpoints"]),
    "download": Stage({"source": "inputs.dataset"}, ["data.dataset", "data.source", "data.label"]),
    "split": Stage({"index": "download.index", "dataset": "download.dataset"},
                   ["data.split", "data.val_fraction", "data.test_fraction", "data.train_fraction", "data.seed"]),
    "extract": Stage({**DATA, **_WEIGHTS}, _FEATURE_PARAMS, shards="features.shards"),
    "train_head": Stage({"train": "extract.train", "val": "extract.val"}, ["head"]),
    "evaluate_probe": Stage({"model": "train_head.model", "features": "extract"}, ["evaluate"]),
    "frozen_cache": Stage({**DATA, **_WEIGHTS}, _FROZEN_PARAMS, "finetune.enabled", "features.shards"),
    "finetune": Stage({**DATA, **_WEIGHTS, "probe": "train_head.model", "frozen": "frozen_cache.meta"},
                      ["model", "finetune"], "finetune.enabled"),
    "evaluate_finetune": Stage({**DATA, "model": "finetune.model", "probe": "evaluate_probe.predictions",
                                "frozen": "frozen_cache.meta"}, ["model", "finetune", "evaluate"], "finetune.enabled"),
    "export": Stage({"template": "workflow/report/model_card.md.j2", **DATA, "meta": "extract.meta",
                     "probe": "train_head.model", "finetune": "finetune.model",
                     "probe_metrics": "evaluate_probe.metrics", "finetune_metrics": "evaluate_finetune.metrics"},
                    ["finetune.enabled", "export"]),
    "visualize": Stage({**DATA, **_WEIGHTS, "probe": "train_head.model", "finetune": "finetune.model"},
                       ["model", "finetune.enabled", "visualize"], "visualize.enabled"),
    "sweep_extract": Stage({**DATA, **_SWEEP_WEIGHTS, "main": "extract"}, _FEATURE_PARAMS + _SWEEP_PARAMS,
                           "sweep.enabled"),
    "sweep_frozen": Stage({**DATA, **_SWEEP_WEIGHTS, "main": "frozen_cache.meta"}, _FROZEN_PARAMS + _SWEEP_PARAMS,
                          "sweep.enabled"),
    "sweep_point": Stage({**DATA, **_SWEEP_WEIGHTS, "features": "sweep_extract", "frozen": "sweep_frozen.meta",
                          **_MAIN_RESULTS}, ["model", "head", "finetune", "evaluate", *_SWEEP_PARAMS], "sweep.enabled"),
    "sweep_aggregate": Stage({"points": "sweep_point.metrics"}, ["sweep"], "sweep.enabled"),
    "report": Stage({"template": "workflow/report/report.html.j2", "style": "workflow/report/style.css",
                     "lock": "requirements.lock",
                     "dataset": "download.dataset", "rejected": "download.rejected", "splits": "split.summary",
                     "meta": "extract.meta", "head": "train_head.summary", "head_search": "train_head.search",
                     "probe": "evaluate_probe", "finetune": "finetune", "finetune_eval": "evaluate_finetune",
                     "visualize": "visualize", "curve": "sweep_aggregate"},
                    ["data", "model", "features", "head", "finetune", "evaluate", "visualize", "sweep"]),
}
STAGE_PARAMS: dict[str, list[str]] = {name: stage.params for name, stage in TABLE.items()}


def params_for(params: Params, stage: str) -> dict[str, Any]:
    """The part of params a stage depends on (what the engines track for it)."""
    return select(params, TABLE[stage].params)


def made_from(params: Params, stage: str, dataset: dict[str, Any]) -> dict[str, Any]:
    """What a stage's output was made from: the dataset (as data/dataset.json names it) and the stage's params.

    Stored in the output, it lets the report show a section only when it belongs to the current run.
    """
    return {"dataset": {key: dataset[key] for key in ("dataset", "source", "label", "images")},
            "classes": len(dataset["classes"]), "params": params_for(params, stage)}


def script(stage: str) -> str:
    return f"workflow/scripts/{stage}.py"


def runner(stage: str) -> Callable[[dict[str, Any], StageIO], object]:
    """The stage's run function (in its adapter), its module imported now."""
    return importlib.import_module(f"transferlab.{ADAPTERS}.{stage}").run


def deps(stage: str) -> list[str]:
    """The stage's script and library files, relative to the project root."""
    return [script(stage)] + imports.paths(modules(stage))


def modules(stage: str) -> list[str]:
    """The library modules the stage's code is made of, read from the imports (imports.py): its script loads the
    stage runner, which loads the module of its run function; editing one re-runs exactly the stages that load
    it."""
    return imports.closure(["pipeline.runner", f"{ADAPTERS}.{stage}"])


def stage_wildcards(stage: str) -> list[str]:
    """The sweep wildcards in the stage's output paths, in the order they first appear."""
    names = [f for path in layout.FILES[stage].values() for _, f, _, _ in string.Formatter().parse(path) if f]
    return list(dict.fromkeys(names))


def enabled(params: Params, stage: str) -> bool:
    switch = TABLE[stage].enabled_by
    if switch is None:
        return True
    return bool(params.at(switch))


def shard_count(params: Params, stage: str) -> int:
    """How many jobs Snakemake spreads the stage over (1: the stage is one job)."""
    key = TABLE[stage].shards
    if key is None:
        return 1
    return int(params.at(key))


def reference(value: str) -> tuple[str, str | None] | None:
    """(stage, file or None) when an input names another stage's output, None for a project file."""
    stage, _, name = value.partition(".")
    return (stage, name or None) if stage in TABLE and (not name or name in layout.FILES[stage]) else None


def source_of(value: str) -> str | None:
    """The stage an input comes from, None for a project file."""
    ref = reference(value)
    return ref[0] if ref else None


def spans_points(stage: str, source: str) -> bool:
    """Whether `source` has sweep wildcards `stage` lacks: the stage reads every point of it."""
    return not set(stage_wildcards(source)) <= set(stage_wildcards(stage))


def unfilled_prefix(template: str) -> str:
    """The folder above a template's first wildcard: what a stage without that wildcard depends on."""
    return template.split("{")[0].rstrip("/")


@dataclass(frozen=True)
class StageIO:
    """What a stage's `run(params, io)` receives: its input and output files by name, as the table says."""

    input: SimpleNamespace
    output: SimpleNamespace
    wildcards: dict[str, str]
    threads: int
    root: Path
    owned: list[Path]  # the folders among the outputs the stage writes as a whole
    shard: int | None = None  # compute only this shard, into layout.shard_files (a Snakemake job of its own)
    gathering: bool = False  # only gather the shards' files into the outputs


def io(stage: str, root: Path | str = ".", out: Path | str | None = None, threads: int = 1,
       wildcards: dict[str, str] | None = None, shard: int | None = None, gathering: bool = False,
       **given: Any) -> StageIO:
    """A stage's files under the project `root` (its outputs in the folder `out` instead, if given); `given`
    replaces inputs by name; `shard`/`gathering`: the part of a sharded stage this job does.

    An input naming a whole stage is that stage's files (attribute access); a sweep input the stage has no
    wildcard for is the folder above it.
    """
    root, filled = Path(root), dict(wildcards or {})
    inputs: dict[str, Any] = {}
    for name, value in TABLE[stage].inputs.items():
        ref = reference(value)
        if name in given:
            inputs[name] = given[name]
        elif ref is None:
            inputs[name] = root / value
        elif spans_points(stage, ref[0]):
            inputs[name] = root / unfilled_prefix(next(iter(layout.FILES[ref[0]].values())))
        else:
            files = layout.files(ref[0], root, **filled)
            inputs[name] = getattr(files, ref[1]) if ref[1] else files
    output = layout.files(stage, root, **filled) if out is None else layout.files_in(stage, out, **filled)
    return StageIO(SimpleNamespace(**inputs), output, filled, threads, root, layout.owned(stage, root, out, **filled),
                   shard, gathering)


def execute(stage: str, run: Callable[[dict[str, Any], StageIO], object], params: Params,
            files: StageIO) -> object:
    """Run a stage, or, where its switch is off, leave its 'skipped' record instead: the one place that decides."""
    if not enabled(params, stage):
        record = skip(stage, files, f"{TABLE[stage].enabled_by}: false")
        log.info("not run (%s): outputs marked skipped", record["reason"])
        return record
    verify_inputs(stage, files)
    if files.gathering:
        checks.verify_shards(stage, shard_count(params, stage), files.root)
    clear_skipped(stage, files)
    result = run(params, files)
    if files.shard is None:
        checks.record(files)
    else:  # in the shard's folder, checked by the job gathering it
        checks.record_shard(stage, files.shard, files.root)
    return result


def records_read(stage: str, io: StageIO) -> list[tuple[Path, str]]:
    """(checksum record, stage that wrote it) of every stage whose files `stage` reads."""
    out: list[tuple[Path, str]] = []
    for value in TABLE[stage].inputs.values():
        source = source_of(value)
        if source is None or "checksums" not in layout.FILES[source]:
            continue
        template = layout.FILES[source]["checksums"]
        if spans_points(stage, source):
            out += [(p, source) for p in sorted(io.root.glob(layout.every_point(template)))]
        else:
            wanted = {w: v for w, v in io.wildcards.items() if "{" + w + "}" in template}
            out.append((io.root / template.format(**wanted), source))
    return list(dict.fromkeys(out))


def verify_inputs(stage: str, io: StageIO) -> None:
    for path, source in records_read(stage, io):
        checks.verify(path, source)


def fillings(params: Params, stage: str) -> list[dict[str, str]]:
    """Every filling of the stage's sweep wildcards over the grid ([{}] for a stage without them)."""
    names = stage_wildcards(stage)
    every = [dict(zip(("backbone", "fraction", "seed"), (b, layout.label(f), str(s)))) for b, f, s in layout.points(params)]
    return [dict(t) for t in dict.fromkeys(tuple((w, point[w]) for w in names) for point in every)]


def mark_disabled(params: Params, root: Path | str = ".") -> list[str]:
    """Leave the 'skipped' records of every stage switched off (Snakemake plans none of them; DVC needs every
    output to exist, so `dvc commit` after a Snakemake run finds them); the stages marked."""
    marked = [stage for stage in TABLE if not enabled(params, stage)]
    for stage in marked:
        for filled in fillings(params, stage):
            skip(stage, io(stage, root, wildcards=filled), f"{TABLE[stage].enabled_by}: false")
    return marked


def skip(stage: str, io_: StageIO, reason: str) -> dict[str, Any]:
    """What a disabled stage leaves (DVC needs every output to exist): each JSON output and each folder it
    owns holds {"skipped": true, "reason": ...}; its other files (in its folders, those named at run time too)
    are removed, so nothing stale looks current."""
    record = {"skipped": True, "reason": reason}
    outputs = list(vars(io_.output).values())
    for path in outputs:
        if path.suffix == ".json":
            write_json(path, record)
        else:
            path.unlink(missing_ok=True)
    for folder in io_.owned:
        for path in folder.rglob("*") if folder.is_dir() else []:
            if path.is_file() and path not in outputs:
                path.unlink()
        if not any(p.suffix == ".json" and folder in p.parents for p in outputs):
            write_json(folder / layout.SKIPPED, record)
    return record


def clear_skipped(stage: str, io_: StageIO) -> None:
    """Remove what `skip` left in the stage's folders before the stage runs."""
    for folder in io_.owned:
        (folder / layout.SKIPPED).unlink(missing_ok=True)
