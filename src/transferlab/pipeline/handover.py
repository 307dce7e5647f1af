"""Snakemake → DVC without loss: what one engine made, the other knows.

A Snakemake run in a DVC project (`.dvc/` exists) ends by recording its outputs for DVC (the Snakefile's
`onsuccess` runs `python -m transferlab.pipeline.handover`): every stage of dvc.yaml whose outputs all exist is committed,
as `dvc commit -f <stage>` does, so that `dvc repro` and `dvc exp run` next re-run only what a change reaches.
Where that could not happen (DVC missing, not yet a git repository), DVC's first stage refuses before DVC deletes
anything, naming the stages to commit (`refuse_unrecorded`). Imports no torch; DVC only in `commit`.
"""
from __future__ import annotations

import base64
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import yaml

from transferlab.core.errors import UserError
from transferlab.pipeline import layout

log = logging.getLogger("transferlab")


def commit(root: Path | str = ".") -> list[str]:
    """Commit every DVC stage whose outputs all exist (a run of some targets leaves the others out); the stages.
    The files stay as Snakemake wrote them (no relink): relinked, each would be written again (a copy, under
    DVC's default cache type), and Snakemake takes an input file written after a job ran for a changed one
    where it keeps no checksum (files over 1 MB), so it would run that job again."""
    from dvc.repo import Repo

    committed = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if stage.outs and all(out.exists for out in stage.outs):
                repo.commit(stage.addressing, force=True, relink=False)
                committed.append(stage.addressing)
    return committed


def commit_for_dvc(root: Path | str = ".") -> bool:
    """The Snakefile's `onsuccess`: `commit` in a process of its own, where `.dvc/` exists; a one-line warning
    where DVC cannot (not installed, not a git repository). Whether it did."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return False
    if importlib.util.find_spec("dvc") is None:
        log.warning("DVC is not installed: the outputs are not recorded for it (dvc commit -f does that)")
        return False
    done = subprocess.run([sys.executable, "-m", "transferlab.pipeline.handover"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        log.warning("dvc commit -f failed, so DVC has no record of these outputs (run it before dvc repro): %s", last)
    return done.returncode == 0


def unrecorded_by_dvc(root: Path | str = ".") -> list[str]:
    """The stages whose outputs a Snakemake run made (its metadata records them) but dvc.lock has no entry for:
    DVC would delete those outputs and run the stages again."""
    from transferlab.pipeline.stages import TABLE

    root = Path(root)
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except OSError:
        lock = {}
    recorded = {name.split("@")[0] for name in lock.get("stages") or {}}
    metadata = root / ".snakemake" / "metadata"  # one file per output, named by its path in urlsafe base64
    found = []
    for stage in TABLE:
        paths = [path for template in layout.FILES[stage].values()
                 for path in root.glob(layout.every_point(template))]
        if stage not in recorded and any(
                (metadata / base64.urlsafe_b64encode(path.relative_to(root).as_posix().encode()).decode()).exists()
                for path in paths):
            found.append(stage)
    return found


def refuse_unrecorded(root: Path | str = ".") -> None:
    """DVC's first stage: refuse where DVC would delete outputs Snakemake made that it has no record of."""
    found = unrecorded_by_dvc(root)
    if found:
        raise UserError(f"dvc.lock: no record of the outputs Snakemake made for {', '.join(found)}, so DVC would "
                        f"delete them and run those stages again; record them first: dvc commit -f {' '.join(found)}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    commit()
