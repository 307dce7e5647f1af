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
    "evaluate": [],
}

_CORE = ["__init__", "cli", "params", "atomic"]
STAGE_MODULES: dict[str, list[str]] = {
    "download": _CORE + ["fetch", "datasets", "images", "index"],
    "split": _CORE + ["fetch", "datasets", "split"],
    "extract": _CORE + ["fetch", "datasets", "images", "split", "backbones", "transforms", "features"],
    "train_head": _CORE + ["fetch", "datasets", "images", "split", "backbones", "transforms", "features", "head"],
    "evaluate": _CORE + ["fetch", "datasets", "images", "split", "backbones", "transforms", "features", "head",
                         "evaluation"],
}


def params_for(params: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of params a stage depends on (what the engines track for it)."""
    return select(params, STAGE_PARAMS[stage])


def deps(stage: str) -> list[str]:
    """The stage's script and library files, relative to the project root."""
    return [f"workflow/scripts/{stage}.py"] + [f"src/transferlab/{m}.py" for m in STAGE_MODULES[stage]]
