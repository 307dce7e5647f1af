"""The train_head stage: C chosen on the validation split, the head saved with its C search and a summary
(probe/head.py)."""
from __future__ import annotations

import logging
import time
from typing import Any

from transferlab.core.atomic import read_arrays, write_csv, write_json
from transferlab.pipeline.stages import StageIO
from transferlab.probe import head
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    train, val = read_arrays(io.input.train), read_arrays(io.input.val)
    start = time.perf_counter()
    model, search = head.fit(train, val, params.head)
    summary = {"C": head.chosen_C(search), "seconds": round(time.perf_counter() - start, 3),
               "train_rows": int(len(train["labels"])), "trainable_parameters": head.parameter_count(model)}
    write_json(io.output.summary, summary)
    write_csv(io.output.search, search)
    head.save(model, io.output.model, [str(c) for c in train["classes"]])
    log.info("C search:\n%s", search.to_string(index=False))
    return summary
