"""Every file one stage writes and another reads is checked before use.

A stage that finishes records the size and sha256 of each file it wrote in its checksum record
(`layout.FILES[stage]["checksums"]`, beside its files, paths relative to the record); a stage about to run
checks every file of the stages it reads against their records. A truncated cache, a bit-flipped model or an
edited index is then one line naming the file and the stage that writes it, before any work. A stage switched
off leaves a 'skipped' record; a record that is missing (a stage run outside both engines) checks nothing.
Imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from transferlab.core.atomic import write_json
from transferlab.core.errors import DamagedFile
from transferlab.core.fetch import file_digest
from transferlab.pipeline import layout

if TYPE_CHECKING:
    from transferlab.pipeline.stages import StageIO

SHARD_RECORD = "checksums.json"


def _written(io: StageIO, record: Path) -> list[Path]:
    """The files a stage wrote: its outputs and everything in the folders it owns (hidden leftovers aside)."""
    found = [p for p in vars(io.output).values() if p.is_file()]
    for folder in io.owned:
        found += [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return sorted({p for p in found if p != record and p.name != layout.SKIPPED})


def _write(path: Path, files: list[Path]) -> None:
    """A checksum record at `path`: each file's size and sha256, by its path relative to the record."""
    write_json(path, {"files": {p.relative_to(path.parent).as_posix(): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
                                for p in files}})


def record(io: StageIO) -> None:
    """Write the stage's checksum record, if it has one (call after the stage wrote everything)."""
    path = getattr(io.output, "checksums", None)
    if path is not None:
        _write(path, _written(io, path))


def verify(path: Path, stage: str, target: str | None = None, required: bool = False) -> None:
    """Check the files a checksum record lists; raise DamagedFile naming the first that differs (`target`: the
    shard's folder that makes it again; `required`: a missing record is damage too)."""
    try:
        entries = json.loads(path.read_text())
    except OSError:
        if required:
            raise DamagedFile(f"{path}: missing (every shard records its files' checksums); make the shard again",
                              stage, target) from None
        return
    except ValueError:
        raise DamagedFile(f"{path}: not valid JSON; re-run the {stage} stage that writes it", stage) from None
    if not isinstance(entries, dict) or entries.get("skipped"):
        return
    for name, want in entries.get("files", {}).items():
        file = path.parent / name
        if not file.is_file():
            problem = "missing"
        elif (size := file.stat().st_size) != want["bytes"]:
            problem = f"{size:,} bytes, but {want['bytes']:,} were written (truncated or replaced)"
        elif file_digest(file) != want["sha256"]:
            problem = "damaged or edited: its sha256 is not the one recorded when it was written"
        else:
            continue
        what = f"make the shard {target} again" if target else f"re-run the {stage} stage that writes it"
        raise DamagedFile(f"{file}: {problem}; {what}", stage, target)


def record_shard(stage: str, shard: int, root: Path) -> None:
    """A shard's checksum record, in its folder: every file the shard wrote, checked when they are gathered."""
    folder = root / layout.SHARD_FOLDERS[stage].format(shard=shard)
    path = folder / SHARD_RECORD
    _write(path, [p for p in sorted(folder.rglob("*")) if p.is_file() and p != path and not p.name.startswith(".")])


def verify_shards(stage: str, count: int, root: Path) -> None:
    """Check every shard's files against the record the shard wrote, before they are gathered."""
    for shard in range(count):
        folder = layout.SHARD_FOLDERS[stage].format(shard=shard)
        verify(root / folder / SHARD_RECORD, stage, target=folder, required=True)


def verify_folder(folder: Path, stage: str) -> None:
    """Check a stage's files moved together elsewhere (an exported model folder) against the record in it."""
    verify(folder / Path(layout.FILES[stage]["checksums"]).name, stage)
