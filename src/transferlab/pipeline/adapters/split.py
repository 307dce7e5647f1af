"""The split stage: first the params that name classes are checked against the dataset, then the index is split
(data/split.py)."""
from __future__ import annotations

import logging
from typing import Any

from transferlab.core.atomic import read_json, read_table, write_csv, write_json
from transferlab.core.project import data_root
from transferlab.data import split
from transferlab.pipeline.stages import StageIO
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    dataset = read_json(io.input.dataset)
    split.check_class_names(params, dataset["classes"])
    parts = split.make_splits(read_table(io.input.index), params.data, data_root(dataset))
    summary = split.summary(parts)
    write_json(io.output.summary, summary)
    for name, frame in parts.items():
        write_csv(getattr(io.output, name), frame)
    log.info("split: %s", {name: part["images"] for name, part in summary.items()})
    return summary
