"""The project's fixed names, and where a path from params.yaml or a stage's record leads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")
METHODS = ("probe", "finetune")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # the test scores with intervals
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1"}
METHOD_NAMES = {"probe": "Frozen features + linear head", "finetune": "Fine-tuned"}
_DVC_TEMP = (".dvc", "tmp", "exps")  # where DVC runs queued and --temp experiments, one copy of the project each


def workspace(root: Path | str = ".") -> Path:
    """The user's project: `root` itself, or the project holding it when `root` is a DVC experiment's temporary
    copy (<project>/.dvc/tmp/exps/<name>)."""
    real = Path(root).resolve()
    parts = real.parts
    if len(parts) > 4 and parts[-4:-1] == _DVC_TEMP:
        return real.parents[3]
    return Path(root)


def resolve(path: str | Path, root: Path | str = ".") -> Path:
    """A path from params.yaml: relative to the project root; one leaving the project, to the user's project."""
    path = Path(path)
    if path.is_absolute():
        return path
    inside = os.path.normpath(path) != ".." and not os.path.normpath(path).startswith(".." + os.sep)
    return (Path(root) if inside else workspace(root)) / path


def data_root(dataset: dict[str, Any], project: Path | str = ".") -> Path:
    """Where the images of a dataset summary (data/dataset.json) are, `resolve`d."""
    return resolve(dataset["root"], project)
