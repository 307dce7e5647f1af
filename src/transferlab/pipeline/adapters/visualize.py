"""The visualize stage (reporting/visualize.py): the ideal class images, adversarial examples and feature maps
as PNGs, and a summary saying what they were made from."""
from __future__ import annotations

import logging
from typing import Any

from transferlab.core.atomic import read_json, read_table, write_json
from transferlab.pipeline.stages import StageIO, made_from
from transferlab.reporting import visualize
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    dataset = read_json(io.input.dataset)
    summary = visualize.visualize(params, dataset, read_table(io.input.splits.test), io.input.finetune,
                                  io.input.probe, io.output)
    summary["made_from"] = made_from(params, "visualize", dataset)
    write_json(io.output.summary, summary)
    log.info("visualize: %s", {k: v for k, v in summary.items() if k != "adversarial"})
    return summary
