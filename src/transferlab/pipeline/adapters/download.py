"""The download stage: the dataset materialised and indexed (data/index.py)."""
from __future__ import annotations

import logging
from typing import Any

from transferlab.data import index
from transferlab.pipeline.stages import StageIO
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    summary = index.build(params.data, io.output, io.threads)
    log.info("%d images in %d classes; %d files left out %s", summary["images"], len(summary["classes"]),
             summary["left_out"], summary["left_out_reasons"])
    return summary
