"""The pipeline's stages as both engines see them: which params and which library modules each depends on.

The Snakefile reads these lists; dvc.yaml spells them out, and a test checks the two agree with each other
and with what each script really imports (Snakemake re-runs a rule on its script, not on imported modules).
"""
from __future__ import annotations

from typing import Any

from .params import select

STAGE_PARAMS: dict[str, list[str]] = {
    "download": ["data.dataset", "data.source", "data.label"],
    "split": ["data.split", "data.val_fraction", "data.test_fraction", "data.train_fraction", "data.seed"],
    "extract": ["model", "features"],
    "train_head": ["head"],
    "evaluate_probe": ["evaluate"],
    "finetune": ["model", "finetune"],
    "evaluate_finetune": ["model", "finetune", "evaluate"],
    "export": ["finetune.enabled", "export"],
    "visualize": ["model", "finetune.enabled", "visualize"],
    "sweep_extract": ["model", "features", "sweep.enabled"],
    "sweep_point": ["model", "head", "finetune", "evaluate", "sweep.enabled"],
    "sweep_aggregate": ["sweep"],
    "report": ["data", "model", "features", "head", "finetune", "evaluate", "visualize", "sweep"],
}

# Stages that share a script with another (the method is a command-line argument).
SCRIPTS: dict[str, str] = {"evaluate_probe": "evaluate", "evaluate_finetune": "evaluate"}

_CORE = ["__init__", "cli", "params", "atomic", "fetch", "datasets"]
_FEATURES = _CORE + ["images", "split", "backbones", "transforms", "engines", "features"]
_EVALUATE = _FEATURES + ["head", "finetune", "stats", "evaluation"]
_SWEEP = _EVALUATE + ["stages", "layout", "sweep"]
STAGE_MODULES: dict[str, list[str]] = {
    "download": _CORE + ["images", "index"],
    "split": _CORE + ["split"],
    "extract": _FEATURES,
    "train_head": _FEATURES + ["head"],
    "evaluate_probe": _EVALUATE,
    "finetune": _FEATURES + ["head", "finetune"],
    "evaluate_finetune": _EVALUATE,
    "export": _FEATURES + ["index", "head", "finetune", "predict", "export"],
    "visualize": _FEATURES + ["head", "finetune", "stages", "visualize"],
    "sweep_extract": _SWEEP,
    "sweep_point": _SWEEP,
    "sweep_aggregate": _SWEEP,
    "report": ["__init__", "cli", "params", "atomic", "images", "stats", "stages", "report"],
}


def params_for(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of params a stage depends on (what the engines track for it)."""
    return select(params, STAGE_PARAMS[stage])


def made_from(params: dict[str, Any], stage: str, dataset: dict[str, Any]) -> dict[str, Any]:
    """What a stage's output was made from: the dataset (as data/dataset.json names it) and the stage's params.

    Stored in the output, it lets the report show a section only when it belongs to the current run.
    """
    return {"dataset": {key: dataset[key] for key in ("dataset", "source", "label", "images")},
            "classes": len(dataset["classes"]), "params": params_for(params, stage)}


def deps(stage: str) -> list[str]:
    """The stage's script and library files, relative to the project root."""
    script = SCRIPTS.get(stage, stage)
    return [f"workflow/scripts/{script}.py"] + [f"src/transferlab/{m}.py" for m in STAGE_MODULES[stage]]
