"""The pipeline's inputs from outside it, versioned: the dataset's files and the checkpoint, as content manifests.

The `inputs` stage writes one manifest per input (`data/inputs/dataset.json`, `data/inputs/checkpoint.json`):
every file's sha256, nothing about where or when. download depends on the first, every stage that builds the
backbone on the second, so adding, removing or changing one image, or replacing the checkpoint under the same
name, re-runs exactly what reads it. A manifest is rewritten only when its content changes (an unchanged one
keeps its time, so Snakemake re-runs nothing), and a file whose size and modification time are as last seen is
not hashed again (`data/inputs/.seen.json`), so the check costs a `stat` per file.

Snakemake refreshes the manifests when it reads the Snakefile; DVC runs the stage every time (`always_changed`:
DVC cannot see files outside the project otherwise), and re-runs what follows only when a manifest changed.

Relative paths are relative to the project root; one that leaves the project (`../shared/...`) resolves against
the user's project also from a DVC experiment's temporary copy (`.dvc/tmp/exps/<name>/`), where `..` would
lead into `.dvc/tmp/exps`. Imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transferlab.core.atomic import write_json_if_changed
from transferlab.core.fetch import file_digest
from transferlab.core.project import resolve
from transferlab.data import folders
from transferlab.settings.params import is_url
from transferlab.settings.sections import Params

_SEEN = ".seen.json"


def content(path: Path, seen: dict[str, list[Any]]) -> dict[str, str]:
    """sha256 of a file, or of every file in a folder by its path inside it; `seen` (path → [size, mtime_ns,
    sha256]) spares hashing a file whose size and time are unchanged, and is updated."""
    files = folders.walk(path)[0] if path.is_dir() else [path]
    out = {}
    for file in files:
        stat = file.stat()
        key = str(file.resolve())
        known = seen.get(key)
        if known is None or known[:2] != [stat.st_size, stat.st_mtime_ns]:
            known = seen[key] = [stat.st_size, stat.st_mtime_ns, file_digest(file)]
        out[file.relative_to(path).as_posix() if path.is_dir() else file.name] = known[2]
    return out


def manifests(params: Params, root: Path | str, seen: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """The dataset's, the checkpoint's and the sweep's other checkpoints' manifests: what they are given as, and
    their files' sha256."""
    source, checkpoint = params.data.source, params.model.checkpoint
    local = source and not is_url(source)
    return {"dataset": {"source": source, "files": content(resolve(source, root), seen) if local else None},
            "checkpoint": {"checkpoint": checkpoint,
                           "files": content(resolve(checkpoint, root), seen) if checkpoint else None},
            "sweep_checkpoints": {backbone: {"checkpoint": path, "files": content(resolve(path, root), seen)}
                                  for backbone, path in sorted(params.sweep.checkpoints.items())}}


def refresh(params: Params, out: Any, root: Path | str = ".") -> list[str]:
    """Write the manifests (`out.dataset`, `out.checkpoint`, `out.sweep_checkpoints`) where their content changed;
    the names changed."""
    state = Path(out.dataset).parent / _SEEN
    try:
        seen = json.loads(state.read_text())
    except (OSError, ValueError):
        seen = {}
    found = manifests(params, root, seen)
    changed = [name for name, data in found.items() if write_json_if_changed(Path(getattr(out, name)), data)]
    write_json_if_changed(state, seen)
    return changed
