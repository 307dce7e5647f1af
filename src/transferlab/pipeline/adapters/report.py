"""The report stage (reporting/report.py): the self-contained HTML page and its figures."""
from __future__ import annotations

from pathlib import Path

from transferlab.core.atomic import read_json
from transferlab.pipeline.stages import STAGE_PARAMS, StageIO, made_from
from transferlab.reporting import report
from transferlab.settings.sections import Params


def run(params: Params, io: StageIO) -> Path:
    dataset = read_json(io.input.dataset)
    current = {stage: made_from(params, stage, dataset) for stage in ("visualize", "sweep_aggregate")}
    return report.render(params, io.input, io.output, STAGE_PARAMS, current)
