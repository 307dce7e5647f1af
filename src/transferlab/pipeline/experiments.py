"""The runs `transferlab compare` reads, never re-computed: each arm's test predictions and validation accuracy
and the params they were made with, from a project folder (or a copy of a run's folder: params.yaml and
results/), or from a DVC experiment or git revision of the project, out of DVC's cache without checking it out
(`dvc.api`)."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from transferlab.core.atomic import read_table
from transferlab.core.errors import UserError
from transferlab.core.project import METHODS
from transferlab.evaluate.compare import Run
from transferlab.pipeline import layout
from transferlab.settings import params as params_mod

log = logging.getLogger("transferlab")

WORKSPACE = "workspace"
UNFINISHED = ("Queued", "Running", "Failed")


def runs_of(name: str, read: Callable[[str], str | None]) -> dict[str, Run]:
    """Each evaluated arm's run ({arm: Run}) of one source whose files `read` gives (a project-relative path →
    its text, None where absent); the test images sorted by id, the list's checksum over (id, label)."""
    text = read("params.yaml")
    if text is None:
        raise UserError(f"{name}: no params.yaml; name a project folder, a copy of a run's folder or an experiment")
    settings = params_mod.flat(params_mod.normalized(yaml.safe_load(text) or {}))
    lock = read("dvc.lock")
    stale = stale_stages(yaml.safe_load(lock) or {}, settings) if lock is not None else {}
    runs = {}
    for arm in METHODS:
        files = layout.files(f"evaluate_{arm}", ".")
        metrics_text, predictions = (read(str(path)) for path in (files.metrics, files.predictions))
        metrics = json.loads(metrics_text) if metrics_text is not None else {"skipped": True}
        if metrics.get("skipped"):
            continue
        if f"evaluate_{arm}" in stale:
            log.warning("%s: its %s results were not made with its params (%s); left out (dvc repro, or run the "
                        "experiment to its end)", name, arm, stale[f"evaluate_{arm}"])
            continue
        if predictions is None:
            raise UserError(f"{name}: {files.predictions} is missing; dvc pull, or re-run the evaluate_{arm} stage")
        frame = read_table(io.StringIO(predictions)).sort_values("id", kind="stable")
        listed = "\n".join(f"{i}\t{label}" for i, label in zip(frame["id"], frame["actual"]))
        runs[arm] = Run(name, settings, hashlib.sha256(listed.encode()).hexdigest()[:16],
                        frame["actual"].to_numpy(str), frame["predicted"].to_numpy(str), metrics["val_accuracy"])
    if not runs:
        raise UserError(f"{name}: no evaluated run (results/metrics/*.json); run the pipeline, or dvc pull")
    return runs


def _sections(recorded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A stage's params as dvc.lock records them (whole sections, or dotted keys; 1e-05 written so that it reads
    back as a string) as sections, for the params' own casting."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in recorded.items():
        if isinstance(value, dict):
            sections.setdefault(key, {}).update(value)
        else:
            section, inner = key.split(".", 1)
            sections.setdefault(section, {})[inner] = value
    return sections


def stale_stages(lock: dict[str, Any], settings: dict[str, Any]) -> dict[str, str]:
    """{stage: why} for each stage of a dvc.lock whose recorded outputs were not made from `settings` (dotted,
    cast as validation casts them) and its inputs as they are now: a param it records differs, an input another
    stage wrote since, or an input from a stage that is itself stale. A `dvc exp run <target>` leaves the stages
    after its target so; DVC's own status says the same, read here from the lock alone."""
    stages = lock.get("stages", {})
    written = {out["path"]: (name, out.get("md5")) for name, stage in stages.items() for out in stage.get("outs", [])}
    stale = {}
    for name, stage in stages.items():
        recorded = _sections(stage.get("params", {}).get("params.yaml", {}))
        cast = params_mod.flat(params_mod.normalized(recorded))  # with every default: only the recorded keys count
        differ = [key for key in params_mod.flat(recorded) if settings.get(key) != cast[key]]
        newer = [dep["path"] for dep in stage.get("deps", [])
                 if dep["path"] in written and written[dep["path"]][1] != dep.get("md5")]
        if differ or newer:
            stale[name] = f"{', '.join(differ)} changed" if differ else f"{newer[0]} is newer"
    while True:  # what read a stale stage's outputs is stale too
        more = {name: f"{written[dep['path']][0]} is stale" for name, stage in stages.items() if name not in stale
                for dep in stage.get("deps", []) if written.get(dep["path"], ("",))[0] in stale}
        if not more:
            return stale
        stale.update(more)


def read_folder(folder: Path, name: str | None = None) -> dict[str, Run]:
    """The runs of a project folder (the project's own under the name `workspace`), or of a copy of a run's
    folder."""
    return runs_of(name or str(folder), lambda path: (folder / path).read_text() if (folder / path).is_file() else None)


def read_experiment(project: Path, name: str) -> dict[str, Run]:
    """The runs of a DVC experiment (or git revision) of the project, read from DVC's cache (what it lacks
    fetched from the default remote) through one filesystem of that revision (`dvc.api.DVCFileSystem`: the
    revision's index built once, not per file)."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    files = DVCFileSystem(str(project), rev=name)

    def read(path: str) -> str | None:
        try:
            return files.read_text(path)
        except FileNotFoundError:
            return None
        except (OSError, DvcException) as error:  # not in the cache, and fetching it from the remote failed
            raise UserError(f"{name}: {path} is not in DVC's cache and its remote failed ({type(error).__name__}: "
                            f"{error}); dvc pull once the remote answers") from error

    return runs_of(name, read)


def _dvc_project(project: Path, wanted: str | None = None) -> None:
    """Refuse to look for experiments (the one `wanted`, else all) outside a DVC project (git and .dvc/)."""
    if not (project / ".dvc").is_dir() or not (project / ".git").exists():
        where = f"{project.resolve()} is no DVC project"
        raise UserError(f"{wanted}: no such folder, and {where} to hold experiments (give --project)" if wanted
                        else f"{where}: no experiments to list; name the folders to compare, or give --project")


def _experiment_rows(project: Path, everything: bool) -> list[dict]:
    """dvc exp show's rows: of the current commit, or of every commit (`everything`)."""
    import dvc.api

    return dvc.api.exp_show(repo=str(project), num=-1 if everything else 1)


def experiments(project: Path) -> list[str]:
    """The finished DVC experiments of the project's current commit (queued, running or failed ones are named
    on the log and left out)."""
    _dvc_project(project)
    names = []
    for row in _experiment_rows(project, everything=False):
        if row.get("Experiment") and row.get("State") in UNFINISHED:
            log.warning("%s: %s, left out", row["Experiment"], row["State"].lower())
        elif row.get("Experiment"):
            names.append(row["Experiment"])
    return names


def read(project: Path, sources: list[str]) -> dict[str, dict[str, Run]]:
    """{source: its runs} for each source: a folder, `workspace` (the project folder), or a DVC experiment or
    git revision; with no sources, the workspace and every finished experiment of the current commit. Every
    name is checked (experiments listed once) before any run is read."""
    sources = list(dict.fromkeys(sources or [WORKSPACE, *experiments(project)]))
    named = [source for source in sources if source != WORKSPACE and not Path(source).is_dir()]
    if named:
        _dvc_project(project, named[0])
        rows = _experiment_rows(project, everything=True)
        for name in named:
            _checked_name(project, name, rows)
    found = {}
    for source in sources:
        if source == WORKSPACE:
            found[source] = read_folder(project, WORKSPACE)
        else:
            found[source] = read_experiment(project, source) if source in named else read_folder(Path(source))
    return found


def _checked_name(project: Path, name: str, rows: list[dict]) -> None:
    """Refuse a name that is no finished experiment (among dvc exp show's `rows`) nor a git revision."""
    for row in rows:
        if row.get("Experiment") == name or row.get("rev") == name:
            if row.get("State") in UNFINISHED:
                raise UserError(f"{name}: {row['State'].lower()}; compare it once it has run (dvc queue status)")
            return
    if subprocess.run(["git", "rev-parse", "--verify", "-q", f"{name}^{{commit}}"], cwd=project,
                      capture_output=True).returncode == 0:
        return
    raise UserError(f"{name}: no such folder, experiment or git revision (dvc exp show lists them)")
