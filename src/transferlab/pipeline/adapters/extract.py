"""The extract stage: frozen features of every split (probe/features.py), in one job, in one of its shards
(io.shard, into the shard's own folder), or gathered from the shards' files (io.gathering)."""
from __future__ import annotations

import logging
from typing import Any

from transferlab.core.atomic import read_json, read_splits, write_json
from transferlab.models import backbones
from transferlab.pipeline import layout, shards
from transferlab.pipeline.stages import StageIO
from transferlab.probe import features
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def run(params: Params, io: StageIO) -> dict[str, Any]:
    if io.gathering:
        return gather(params, io)
    dataset, frames = read_json(io.input.dataset), read_splits(io.input.splits)
    out = io.output if io.shard is None else layout.shard_files("extract", io.shard, io.root)
    meta = features.extract(backbones.resolved(params.model), params.features, dataset, frames,
                            shards.rows(frames, params.features, io.shard), out)
    if io.shard is not None:
        meta["shard"] = shards.record(frames, dataset["classes"], params.features, io.shard)
    write_json(out.meta, meta)
    for split, stats in meta["splits"].items():
        log.info("%s: %d images in %.1f s (%.1f img/s), %d features", split, stats["images"], stats["seconds"],
                 stats["images_per_s"] or 0, meta["feature_dim"])
    return meta


def gather(params: Params, io: StageIO) -> dict[str, Any]:
    """The stage's outputs from its shards' files (Snakemake's gathering job); a shard computed from other images
    than the split lists hold now is refused (shards.check)."""
    count = params.features.shards
    parts_of = [layout.shard_files("extract", s, io.root) for s in range(count)]
    metas = [read_json(shard.meta) for shard in parts_of]
    shards.check("extract", [m["shard"] for m in metas], read_splits(io.input.splits),
                 read_json(io.input.dataset)["classes"], params.features)
    meta = features.gather(parts_of, metas, params.features.train_views, io.output)
    write_json(io.output.meta, meta)
    log.info("gathered %d shards: %s", count, ", ".join(f"{s} {m['images']} images" for s, m in meta["splits"].items()))
    return meta
