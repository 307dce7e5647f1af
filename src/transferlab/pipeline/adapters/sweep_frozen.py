"""The sweep_frozen stage: the frozen-prefix cache of one (backbone, seed) over the full splits, shared by every
fraction; where it is the main fine-tune's own cache (same backbone and seed), that one, copied."""
from __future__ import annotations

import json
import logging
from typing import Any

from transferlab.core.atomic import read_json, read_splits, write_json
from transferlab.pipeline.stages import StageIO
from transferlab.settings.params import sweep_point
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    from transferlab.finetuning import frozen  # torch: loaded only where the stage runs
    from transferlab.models import backbones

    w = io.wildcards
    folder = io.output.meta.parent
    if not params.finetune.enabled:
        frozen.clear(folder)
        record = {"cached": False, "reason": "finetune.enabled: false"}
        write_json(io.output.meta, record)
        return record
    point = sweep_point(params, w["backbone"], int(w["seed"]))
    settings = point.finetune
    frames = read_splits(io.input.splits)
    main = read_json(io.input.main)
    backbone = backbones.resolved(point.model)
    if main.get("cached") and main["key"] == json.loads(json.dumps(frozen.key(backbone, settings, frames))):
        frozen.copy(io.input.main.parent, folder)
        log.info("%s seed %s: the main fine-tune's frozen-prefix cache, copied", w["backbone"], w["seed"])
        return main
    return frozen.build(backbone, point.features, settings, read_json(io.input.dataset), frames, folder,
                        frozen.parts(settings, frozen.SWEEP_PARTS))
