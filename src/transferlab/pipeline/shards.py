"""Which images each shard of a sharded stage computes, and a record of them that changes only when they do.

Under Snakemake, extract and frozen_cache run as `features.shards` jobs each (layout.SHARD_FOLDERS), then a job
gathers them. Every shard takes each split's rows in whole batches (`rows`). Its record (`record`) is what its
files are a function of besides params and weights: its rows, the sha256 of their lines in the split's list (path,
label and the image's sha256) and the classes. The Snakefile's `shard_rows` checkpoint writes each record to its
file (layout.SHARD_ROWS) after split; Snakemake reads the shards' inputs once it has run, and skips a shard whose
file has the checksum it had when the shard last ran: a changed image re-runs its shard alone. Each shard keeps
its record in its meta.json, and the gathering job refuses a shard whose record is not the current one (`check`),
so a stale shard never reaches the gathered files. Imports no torch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.core.atomic import read_json, read_splits, write_json
from transferlab.core.errors import UserError
from transferlab.pipeline import layout
from transferlab.settings.sections import Features, Params

if TYPE_CHECKING:
    import pandas as pd


def rows(frames: dict[str, pd.DataFrame], feat: Features, shard: int | None) -> dict[str, range]:
    """Each split's rows in shard `shard` of `features.shards` (every row where None): contiguous, and as even as
    whole batches of `features.batch_size` allow, so that each shard computes the unsharded run's batches."""
    out = {}
    for split, frame in frames.items():
        n = len(frame)
        if shard is None:
            out[split] = range(n)
            continue
        batches, count = -(-n // feat.batch_size), feat.shards
        cuts = [min(n, batches * s // count * feat.batch_size) for s in (shard, shard + 1)]
        out[split] = range(*cuts)
    return out


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(frames: dict[str, pd.DataFrame], classes: list[str], feat: Features, shard: int) -> dict[str, Any]:
    """What shard `shard`'s files are made of: each split's rows and the sha256 of their lines, and the classes."""
    return {"shard": shard, "of": feat.shards, "classes": _sha256("\n".join(classes)),
            "splits": {split: {"rows": [r.start, r.stop],
                               "sha256": _sha256(frames[split].iloc[r.start:r.stop].to_csv(index=False))}
                       for split, r in rows(frames, feat, shard).items()}}


def write(params: Params, log: Path | str) -> None:
    """Every shard's record into its file (the Snakefile's checkpoint, in Snakemake's process, in the project
    root), a line each to `log`."""
    frames = read_splits(layout.files("split"))
    classes = read_json(layout.files("download").dataset)["classes"]
    paths, lines = [Path(path) for path in records(params)], []
    for shard, path in enumerate(paths):
        made = record(frames, classes, params.features, shard)
        write_json(path, made)
        lines.append(f"shard {shard}: " + ", ".join(f"{split} rows {part['rows'][0]}-{part['rows'][1]}"
                                                   for split, part in made["splits"].items()))
    Path(log).write_text("\n".join(lines) + "\n")


def records(params: Params) -> list[str]:
    """The files of every shard's record, relative to the project root."""
    return [layout.SHARD_ROWS.format(shard=s) for s in range(params.features.shards)]


def check(stage: str, recorded: list[dict[str, Any]], frames: dict[str, pd.DataFrame], classes: list[str],
          feat: Features) -> None:
    """Refuse to gather a shard computed from other images than the split lists hold now (or another count)."""
    for shard, found in enumerate(recorded):
        if found != record(frames, classes, feat, shard):
            folder = layout.SHARD_FOLDERS[stage].format(shard=shard)
            raise UserError(f"{folder}: computed from other images than the split lists hold now; run snakemake "
                            f"again (it re-runs the shards whose images changed) or this shard's job "
                            f"(python workflow/scripts/{stage}.py --shard {shard}) before gathering")
