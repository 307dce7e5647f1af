"""The evaluate_probe stage: the linear probe on the cached (un-augmented) features of each split; no TTA (the
cached test features hold the centre view only). `write` saves any method's evaluation (evaluate/evaluation.py)."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from transferlab.core.atomic import read_arrays, write_csv, write_json
from transferlab.core.project import SPLITS
from transferlab.evaluate.evaluation import Evaluation, evaluate
from transferlab.pipeline.stages import StageIO
from transferlab.probe import head
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    model, class_names = head.load(io.input.model)
    proba, labels = {}, {}
    for split in SPLITS:
        cached = read_arrays(getattr(io.input.features, split))
        plain = cached["views"] == 0
        proba[split] = head.predict_proba(model, cached["features"][plain], len(class_names))
        labels[split] = cached["labels"][plain]
        ids = cached["ids"][plain]
    return write(evaluate("probe", proba, labels, ids, class_names, params.evaluate), io.output)


def write(evaluation: Evaluation, out: SimpleNamespace) -> dict[str, Any]:
    """An evaluate stage's files: the tables, then the metrics (last: their presence means the stage finished)."""
    write_csv(out.predictions, evaluation.predictions)
    write_csv(out.per_class, evaluation.per_class)
    write_csv(out.confusion, evaluation.confusion)
    write_json(out.metrics, evaluation.metrics)
    metrics = evaluation.metrics
    log.info("%s: %s", metrics["method"], {k: v for k, v in metrics.items() if k not in ("method", "interval", "vs_probe")})
    return metrics
