"""The evaluate_finetune stage: the fine-tuned network on each split (and the test split with TTA), from the
frozen-prefix cache where it exists, compared with the probe's predictions on the same test images."""
from __future__ import annotations

from typing import Any

from transferlab.core.atomic import read_json, read_splits, read_table
from transferlab.core.project import SPLITS, data_root
from transferlab.evaluate.evaluation import evaluate
from transferlab.finetuning import finetune, frozen, network
from transferlab.models import backbones
from transferlab.pipeline.adapters.evaluate_probe import write
from transferlab.pipeline.stages import StageIO
from transferlab.settings.sections import Params


def run(params: Params, io: StageIO) -> dict[str, Any]:
    dataset = read_json(io.input.dataset)
    classes, root = dataset["classes"], data_root(dataset)
    backbone = backbones.resolved(params.model)
    model = network.load(backbone, io.input.model, len(classes))
    frames = read_splits(io.input.splits)
    cache = frozen.Cache.open(io.input.frozen.parent, backbone, params.finetune, frames, classes)
    predict = finetune.predictor(model, backbone, root, classes, params.finetune.batch_size, cache)
    proba, labels = {}, {}
    for split in SPLITS:
        proba[split], labels[split] = predict(split, frames[split])
    tta = predict("test", frames["test"], tta=True)[0] if params.evaluate.tta else None
    return write(evaluate("finetune", proba, labels, frames["test"]["path"].to_numpy(), classes, params.evaluate,
                          read_table(io.input.probe), tta), io.output)
