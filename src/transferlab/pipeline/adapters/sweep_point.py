"""The sweep_point stage: one (backbone, fraction, seed) of the learning curve (evaluate/sweep.py); the point
that is the main pipeline's own run reads its results."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pandas as pd

from transferlab.core.atomic import read_json, read_splits, write_json
from transferlab.evaluate import sweep
from transferlab.evaluate.evaluation import scored_part
from transferlab.pipeline.stages import StageIO, made_from
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    w = io.wildcards
    backbone, fraction, seed = w["backbone"], float(w["fraction"]), int(w["seed"])
    dataset, frames = read_json(io.input.dataset), read_splits(io.input.splits)
    if sweep.is_main(params, backbone, fraction, seed):
        log.info("%s fraction %s seed %s is the main pipeline's run (model.backbone, all training images, "
                 "finetune.seed): its results, read from train_head, evaluate_probe, finetune and evaluate_finetune",
                 backbone, w["fraction"], seed)
        result = from_main(params, seed, dataset, frames, io.input)
    else:
        log.info("%s fraction %s seed %s: cached features from %s (no extraction here)", backbone, w["fraction"],
                 seed, io.input.features.meta.parent)
        result = sweep.run_point(params, backbone, fraction, seed, dataset, frames, io.input.features,
                                 io.input.frozen.parent)
    result["made_from"] = made_from(params, "sweep_point", dataset)
    write_json(io.output.metrics, result)
    log.info("%d training images (%.1f per class): probe accuracy %.4f%s", result["train_images"],
             result["images_per_class"], result["probe"]["accuracy"],
             f", fine-tune {result['finetune']['accuracy']:.4f}" if result["finetune"] else "")
    return result


def from_main(params: Params, seed: int, dataset: dict[str, Any], frames: dict[str, pd.DataFrame],
              main: SimpleNamespace) -> dict[str, Any]:
    """The main point's metrics from the main pipeline's outputs (`main`: the sweep_point stage's inputs)."""
    probe, head_summary = read_json(main.main_probe), read_json(main.main_head)
    result = sweep.point_record(params, params.model.backbone, 1.0, seed, dataset, len(frames["train"]),
                                probe["test_images"], main.features.meta.parent)
    result["probe"] = {**scored_part(probe), "seconds": head_summary["seconds"], "C": head_summary["C"]}
    if params.finetune.enabled:
        tuned, summary = read_json(main.main_evaluation), read_json(main.main_finetune)
        result["finetune"] = {**scored_part(tuned), **sweep.tuning_record(summary)}
        result["vs_probe"] = tuned["vs_probe"]
    return result
