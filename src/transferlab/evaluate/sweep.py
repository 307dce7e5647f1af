"""One point of the learning curve: frozen features + head vs fine-tuning at one training-set size and backbone.

A point (backbone, fraction, seed) takes a seeded per-class subsample of the training list, selects its rows
from the backbone's cached features, fits the head, and fine-tunes from it (from the (backbone, seed)
frozen-prefix cache where there is one). Val and test sets are the same for every point, so the curve compares
like with like; curve.py gathers the points.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from transferlab.core.atomic import read_arrays
from transferlab.core.project import SPLITS, data_root
from transferlab.data.split import subsample
from transferlab.evaluate.evaluation import scored, versus
from transferlab.settings import grid
from transferlab.settings.params import sweep_point
from transferlab.settings.sections import Params


def _rows(cached: dict[str, np.ndarray], ids: set[str]) -> dict[str, np.ndarray]:
    keep = np.isin(cached["ids"], list(ids))
    return {k: (v[keep] if k != "classes" else v) for k, v in cached.items()}


def is_main(params: Params, backbone: str, fraction: float, seed: int) -> bool:
    """Whether a point is the main pipeline's own run: model.backbone, every training image and (where it
    fine-tunes) finetune.seed; its head and fine-tune are then the main ones to the digit."""
    return (backbone == params.model.backbone and fraction >= 1
            and (not params.finetune.enabled or seed == params.finetune.seed))


def point_record(params: Params, backbone: str, fraction: float, seed: int, dataset: dict[str, Any],
           train_images: int, test_images: int, features_folder: Path) -> dict[str, Any]:
    """A point's metrics record without its scores."""
    return {"backbone": backbone, "fraction": fraction, "seed": seed, "train_images": train_images,
            "images_per_class": round(train_images / len(dataset["classes"]), 2), "test_images": test_images,
            "features": str(features_folder),
            "confidence": params.evaluate.confidence, "probe": None, "finetune": None}


def tuning_record(summary: dict[str, Any]) -> dict[str, Any]:
    """What a point records of its fine-tune: cost, epochs, the setting its validation search chose (`setting`:
    in words, "the start" where no candidate beat it)."""
    setting = (f"{summary['augment']}, {grid.blocks(summary['unfreeze'])}, lr {summary['lr']:g}, α {summary['alpha']:g}"
               if summary["improved"] else "the start (no candidate beat it)")
    return {**{k: summary[k] for k in ("seconds", "epochs_run", "from_cache", "lr", "head_lr", "weight_decay",
                                       "candidates", "improved")}, "setting": setting}


def run_point(params: Params, backbone: str, fraction: float, seed: int, dataset: dict[str, Any],
              frames: dict[str, pd.DataFrame], cache: SimpleNamespace, frozen_folder: Path) -> dict[str, Any]:
    """Fit the head on the point's subsample of the cached features, then fine-tune from it (from the
    (backbone, seed) frozen-prefix cache in `frozen_folder` where there is one); the point's metrics."""
    from transferlab.finetuning import finetune, frozen
    from transferlab.models import backbones
    from transferlab.probe import head

    params = sweep_point(params, backbone, seed)
    full = frames
    frames = {**frames, "train": subsample(frames["train"], fraction, seed)}
    cached = {s: _rows(read_arrays(getattr(cache, s)), set(frames[s]["path"])) for s in SPLITS}
    classes = [str(c) for c in cached["train"]["classes"]]
    evaluate = params.evaluate
    start = time.perf_counter()
    model, search = head.fit(cached["train"], cached["val"], params.head)
    test = cached["test"]
    proba = head.predict_proba(model, test["features"], len(classes))
    predicted = proba.argmax(1)
    result = point_record(params, backbone, fraction, seed, dataset, len(frames["train"]), int(len(test["labels"])),
                          cache.meta.parent)
    result["probe"] = {**scored(test["labels"], proba, evaluate), "seconds": round(time.perf_counter() - start, 3),
                       "C": head.chosen_C(search)}
    if params.finetune.enabled:
        settings, pretrained, root = params.finetune, backbones.resolved(params.model), data_root(dataset)
        views = frozen.Cache.open(frozen_folder, pretrained, settings, full, classes)
        tuned = finetune.tune(pretrained, settings, head.as_linear(model), root, frames, classes, views,
                              frozen.rows_of(full["train"], frames["train"]))
        summary = tuned.summary
        predict = finetune.predictor(tuned.net, pretrained, root, classes, settings.batch_size, views)
        proba, labels = predict("test", frames["test"])
        result["finetune"] = {**scored(labels, proba, evaluate), **tuning_record(summary)}
        baseline = pd.DataFrame({"id": test["ids"], "correct": predicted == test["labels"]})
        result["vs_probe"] = versus(baseline, "finetune", frames["test"]["path"].to_numpy(), proba.argmax(1) == labels,
                                    evaluate)
    return result
