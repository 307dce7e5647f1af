"""The frozen_cache stage: the main fine-tune's views through the frozen prefix (finetuning/frozen.py), every
part, or a meta.json saying why not; in one job, in one of its shards (io.shard, into the shard's own folder),
or gathered from the shards' folders (io.gathering)."""
from __future__ import annotations

from typing import Any

from transferlab.core.atomic import read_json, read_splits, write_json
from transferlab.finetuning import frozen
from transferlab.models import backbones
from transferlab.pipeline import layout, shards
from transferlab.pipeline.stages import StageIO
from transferlab.settings.sections import Params


def run(params: Params, io: StageIO) -> dict[str, Any]:
    frames, dataset = read_splits(io.input.splits), read_json(io.input.dataset)
    backbone = backbones.resolved(params.model)
    if io.gathering:
        folders = [layout.shard_files("frozen_cache", s, io.root).meta.parent
                   for s in range(params.features.shards)]
        metas = [read_json(folder / "meta.json") for folder in folders]
        shards.check("frozen_cache", [m["shard"] for m in metas], frames, dataset["classes"], params.features)
        return frozen.gather(folders, metas, io.output.meta.parent, backbone, params.finetune, frames)
    shard = io.shard is not None
    folder = (layout.shard_files("frozen_cache", io.shard, io.root) if shard else io.output).meta.parent
    record = frozen.build(backbone, params.features, params.finetune, dataset, frames, folder,
                          frozen.parts(params.finetune, frozen.EVALUATION_PARTS),
                          shards.rows(frames, params.features, io.shard))
    if shard:
        record["shard"] = shards.record(frames, dataset["classes"], params.features, io.shard)
        write_json(folder / "meta.json", record)
    return record
