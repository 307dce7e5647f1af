"""The finetune stage (finetuning/finetune.py): the chosen candidate's best-epoch weights and per-epoch history,
the search table, the LR range test, a summary, and every epoch through DVCLive as it ends
(results/finetune/live)."""
from __future__ import annotations

import logging
from typing import Any

import torch

from transferlab.core.atomic import atomic_path, read_json, read_splits, write_csv, write_json
from transferlab.core.project import data_root
from transferlab.finetuning import finetune, frozen, tracking, tuning
from transferlab.models import backbones
from transferlab.pipeline.stages import StageIO
from transferlab.probe import head
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    dataset = read_json(io.input.dataset)
    frames, classes = read_splits(io.input.splits), dataset["classes"]
    probe = head.linear(io.input.probe)
    backbone = backbones.resolved(params.model)
    cache = frozen.Cache.open(io.input.frozen.parent, backbone, params.finetune, frames, classes)
    with tracking.open_live(io.output.live.parent) as live:
        tuned = finetune.tune(backbone, params.finetune, probe, data_root(dataset), frames, classes, cache,
                              for_report=True, live=live)
    with atomic_path(io.output.model) as tmp:
        torch.save({k: v.cpu() for k, v in tuned.net.state_dict().items()}, tmp)
    write_csv(io.output.history, tuned.history)
    write_csv(io.output.search, tuned.search)
    write_csv(io.output.range_test, tuned.range_test)
    write_json(io.output.summary, tuned.summary)
    if tuned.summary["candidates"] > 1:
        columns = [*tuning.GRID, "best_epoch", "val_log_loss", "val_accuracy", "state"]
        log.info("search on validation:\n%s", tuning.scores(tuned.search)[columns].to_string(index=False))
    log.info("fine-tune: %s", tuned.summary)
    return tuned.summary
