"""Where every stage's files live, relative to the project root: the one place a path is spelled.

Stage outputs are templates: {backbone}, {fraction} and {seed} name a learning-curve sweep point. Imports no
torch, so the Snakefile can read it at parse time.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transferlab.core.project import SPLITS
from transferlab.settings.sections import Params

# A wildcard of the sweep's stages and the params list it takes its values from (a DVC matrix).
WILDCARDS = {"backbone": "sweep.backbones", "fraction": "sweep.fractions", "seed": "sweep.seeds"}
SWEEP = "results/sweep"
SWEEP_POINT = SWEEP + "/{backbone}/{fraction}/{seed}"


def _evaluation(method: str) -> dict[str, str]:
    folder = f"results/eval/{method}"
    return {"metrics": f"results/metrics/{method}.json", "predictions": f"{folder}/predictions.csv",
            "per_class": f"{folder}/per_class.csv", "confusion": f"{folder}/confusion_matrix.csv"}


def _splits(folder: str, suffix: str) -> dict[str, str]:
    return {split: f"{folder}/{split}{suffix}" for split in SPLITS}


FILES: dict[str, dict[str, str]] = {
    "inputs": {"dataset": "data/inputs/dataset.json", "checkpoint": "data/inputs/checkpoint.json",
               "sweep_checkpoints": "data/inputs/sweep_checkpoints.json"},
    "download": {"index": "data/index.csv", "rejected": "data/rejected.csv", "dataset": "data/dataset.json"},
    "split": {**_splits("data/splits", ".csv"), "summary": "data/splits/summary.json"},
    "extract": {**_splits("results/features", ".npz"), "meta": "results/features/meta.json"},
    "train_head": {"model": "results/head/model.npz", "search": "results/head/search.csv",
                   "summary": "results/head/summary.json"},
    "evaluate_probe": _evaluation("probe"),
    "frozen_cache": {"meta": "results/frozen/meta.json"},
    "finetune": {"model": "results/finetune/model.pt", "history": "results/finetune/history.csv",
                 "search": "results/finetune/search.csv", "range_test": "results/finetune/lr_range.csv",
                 "live": "results/finetune/live/metrics.json",
                 "summary": "results/finetune/summary.json"},
    "evaluate_finetune": _evaluation("finetune"),
    "export": {"model": "results/model/model.onnx", "labels": "results/model/labels.json",
               "preprocessing": "results/model/preprocessing.json", "summary": "results/model/summary.json",
               "card": "results/model/model_card.md"},
    "visualize": {"summary": "results/visualize/summary.json", "ideal": "results/visualize/ideal_with_tv.png",
                  "ideal_no_tv": "results/visualize/ideal_without_tv.png",
                  "maps": "results/visualize/feature_maps.png"},
    "sweep_extract": {**_splits(SWEEP + "/{backbone}/features", ".npz"),
                      "meta": SWEEP + "/{backbone}/features/meta.json"},
    "sweep_frozen": {"meta": SWEEP + "/{backbone}/frozen/{seed}/meta.json"},
    "sweep_point": {"metrics": SWEEP_POINT + "/metrics.json"},
    "sweep_aggregate": {"summary": "results/curve/summary.json", "points": "results/curve/points.csv",
                        "curve": "results/curve/curve.csv", "metrics": "results/curve/metrics.json",
                        "plot": "results/curve/curve.png"},
    "report": {"html": "results/report.html", "confusion": "results/report/confusion.png",
               "per_class": "results/report/per_class.png", "learning": "results/report/learning_curves.png",
               "reliability": "results/report/reliability.png", "search": "results/report/search.png"},
}


# Stages Snakemake may spread over jobs (stages.Stage.shards): each shard's files go to a folder of their own, named
# as the stage's (outside the stage's folders, which DVC caches), and the stage's rule gathers them. DVC computes
# every shard in the stage's one process.
SHARD_FOLDERS = {"extract": "results/shards/extract/{shard}", "frozen_cache": "results/shards/frozen_cache/{shard}"}
CODE_RECORD = "data/code/{name}.json"  # a stage's code, by content, for Snakemake (render.write_code_records)
SHARD_ROWS = "results/shards/rows/{shard}.json"  # which images a shard computes, as of the last split (shards.py)


def folder(stage: str) -> str:
    """The folder holding all of a stage's files (results/features, results/model, data...)."""
    return os.path.commonpath([os.path.dirname(path) for path in FILES[stage].values()])


# Each stage's checksum record (checks.py): the sha256 of every file it wrote, beside them. The inputs stage has
# none: its manifests are themselves records of content.
for _stage in list(FILES)[1:]:
    FILES[_stage]["checksums"] = f"{folder(_stage)}/checksums.{_stage}.json"

# Folders a stage writes as a whole (DVC caches each as one output; it may hold files named at run time).
OWNED: dict[str, list[str]] = {
    "evaluate_probe": ["results/eval/probe"], "frozen_cache": ["results/frozen"], "finetune": ["results/finetune"],
    "evaluate_finetune": ["results/eval/finetune"], "export": ["results/model"], "visualize": ["results/visualize"],
    "sweep_extract": [SWEEP + "/{backbone}/features"], "sweep_frozen": [SWEEP + "/{backbone}/frozen/{seed}"],
    "sweep_point": [SWEEP_POINT],
    "sweep_aggregate": ["results/curve"], "report": ["results/report"],
}
SKIPPED = "skipped.json"  # what a disabled stage leaves in a folder it owns


def _place(stage: str, template: str, root: Path | str, where: Path | str | None, wildcards: dict[str, Any]) -> Path:
    """One of a stage's paths under the project `root`, or with the stage's folder moved to `where`."""
    if where is not None:
        template = os.path.relpath(template, folder(stage))
    return Path(root if where is None else where) / template.format(**wildcards)


def files(stage: str, root: Path | str = ".", **wildcards: Any) -> SimpleNamespace:
    """A stage's files by name (attribute access) under `root`, sweep wildcards filled in."""
    return SimpleNamespace(**{name: _place(stage, path, root, None, wildcards) for name, path in FILES[stage].items()})


def files_in(stage: str, where: Path | str, **wildcards: Any) -> SimpleNamespace:
    """A stage's files with its folder moved to `where` (an exported model copied elsewhere, a test's tmp dir)."""
    return SimpleNamespace(**{name: _place(stage, path, ".", where, wildcards) for name, path in FILES[stage].items()})


def owned(stage: str, root: Path | str = ".", where: Path | str | None = None, **wildcards: Any) -> list[Path]:
    """The folders the stage owns, placed as `files` (under `root`) or `files_in` (moved to `where`) place them."""
    return [_place(stage, path, root, where, wildcards) for path in OWNED.get(stage, [])]


def every_point(template: str) -> str:
    """An output template as a glob pattern matching it at every sweep point (each wildcard a `*`)."""
    return template.format(**dict.fromkeys(WILDCARDS, "*"))


def shard_files(stage: str, shard: int, root: Path | str = ".") -> SimpleNamespace:
    """One shard's files by name (attribute access) under `root`: named as the stage's outputs (but its checksum
    record), in the shard's folder."""
    folder = Path(root) / SHARD_FOLDERS[stage].format(shard=shard)
    return SimpleNamespace(**{name: folder / os.path.basename(path) for name, path in FILES[stage].items()
                              if name != "checksums"})


def label(value: float) -> str:
    """A fraction as the Snakefile spells it in paths (0.1, 0.25, 1.0)."""
    return str(float(value))


def points(params: Params) -> list[tuple[str, float, int]]:
    """Every (backbone, fraction, seed) of the grid."""
    sweep = params.sweep
    return [(b, float(f), int(s)) for b in sweep.backbones for f in sweep.fractions for s in sweep.seeds]
