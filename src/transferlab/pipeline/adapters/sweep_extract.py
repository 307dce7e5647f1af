"""The sweep_extract stage: the backbone's features for every image of the split, extracted once for the
whole sweep; model.backbone's are the extract stage's own files, copied (not extracted twice)."""
from __future__ import annotations

import logging
from typing import Any

from transferlab.core.atomic import copy_file, read_json
from transferlab.pipeline.stages import StageIO
from transferlab.settings.params import sweep_point
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    backbone = io.wildcards["backbone"]
    if backbone == params.model.backbone:
        for name, path in vars(io.output).items():
            if name != "checksums":  # the stage runner records the copies' own
                copy_file(getattr(io.input.main, name), path)
        log.info("%s is model.backbone: the extract stage's features, copied", backbone)
        return read_json(io.output.meta)
    from transferlab.pipeline.adapters import extract  # torch: loaded only where features are computed

    meta = extract.run(sweep_point(params, backbone), io)
    log.info("%s: extracted once for the whole sweep: %d images, %s engine, %d features", backbone,
             sum(s["images"] for s in meta["splits"].values()), meta["engine"], meta["feature_dim"])
    return meta
