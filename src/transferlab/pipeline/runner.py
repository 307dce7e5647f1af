"""What every stage script shares: arguments, thread limits, logging, and clean failures."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import time
from pathlib import Path

from transferlab.core import progress
from transferlab.core.errors import DamagedFile, ParamsError, UserError, rerun_command
from transferlab.pipeline import handover, run_lock, stages
from transferlab.settings import params as params_mod
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def _disk_full(exc: BaseException, folder: str | None = None) -> str | None:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or folder or "the output folder"
        needed = (exc.strerror or "").partition(": ")[2]  # what atomic.open_array could not reserve
        return (f"{where}: no space left on the device{f' ({needed})' if needed else ''}; free some and re-run "
                f"(nothing half-written was kept)")
    return None


def engine() -> str | None:
    """The workflow engine running this stage: 'snakemake' (its planned params are in the environment), 'dvc'
    (DVC names the stage it runs in DVC_STAGE), None for a script run by hand."""
    if params_mod.PLANNED in os.environ:
        return "snakemake"
    return "dvc" if "DVC_STAGE" in os.environ else None


def stage_params(path: str, name: str) -> dict:
    """The params the stage computes with: those Snakemake planned the run with (what it records for the stage),
    with a warning where params.yaml has changed since; else the file's."""
    planned = params_mod.planned(path)
    if planned is None:
        return params_mod.load(path)
    moved = params_mod.changed_since(planned, stages.TABLE[name].params, path)
    if moved:
        log.warning("%s: %s changed since snakemake planned this run; this stage computes with the planned values "
                    "(the ones snakemake records); run snakemake again for the file's", path, ", ".join(moved))
    return planned


def held(name: str) -> contextlib.AbstractContextManager:
    """The project's run lock for this stage (run_lock.py), but under Snakemake, which holds it for the run."""
    if engine() == "snakemake":
        return contextlib.nullcontext()
    who = f"dvc ({os.environ['DVC_STAGE']})" if engine() == "dvc" else f"python {stages.script(name)}"
    return run_lock.held(".", who)


def set_threads(threads: int) -> None:
    """Limit torch and BLAS/OpenMP to `threads` (Snakemake's `threads:`, else all cores)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" not in sys.modules:  # a stage that computes nothing (inputs) pays for no torch import
        return
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    torch.set_num_threads(threads)


def show_progress(label: str) -> None:
    """Progress status lines (progress.py) to standard output, "time [label] what: n/total (pct) · ETA", unless
    standard error is a terminal, where the live bars show: under Snakemake, whose rules write standard error to
    their log, they are what the console shows of a running stage."""
    progress.console.propagate = False
    if not sys.stderr.isatty():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s [" + label + "] %(message)s", "%H:%M:%S"))
        progress.console.handlers[:] = [handler]
        progress.console.setLevel(logging.INFO)


def run_stage(name: str) -> None:
    """A stage script's whole body: parse the common arguments (and the stage's sweep wildcards), validate
    params.yaml, and call the stage's run function (`stages.runner`) with its params and files from the table; a
    stage its switch turns off leaves its 'skipped' record instead (the one place that decides it), before its
    module, and torch with it, is loaded."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"transferlab stage: {name}")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for torch, BLAS and image decoding (default: all cores)")
    for wildcard in stages.stage_wildcards(name):
        parser.add_argument(f"--{wildcard}", required=True, help=f"the sweep point's {wildcard} (from sweep.*)")
    if stages.TABLE[name].shards:
        part = parser.add_mutually_exclusive_group()
        part.add_argument("--shard", type=int, help=f"compute only this shard (0-based; {stages.TABLE[name].shards})")
        part.add_argument("--gather", action="store_true", help="only gather the shards' files into the outputs")
    args = parser.parse_args()
    shard, gathering = getattr(args, "shard", None), getattr(args, "gather", False)
    label = name + "".join(f" {getattr(args, w)}" for w in stages.stage_wildcards(name))
    label += "" if shard is None else f" shard {shard}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [" + label + "] %(message)s")
    show_progress(label)
    try:
        params = stage_params(args.params, name)
        count = stages.shard_count(params, name)
        if (shard is not None and not 0 <= shard < count) or (gathering and count == 1):
            what = f"--shard {shard}" if shard is not None else "--gather"
            raise ParamsError(f"{what}: {stages.TABLE[name].shards} is {count} "
                              f"({f'shards 0 to {count - 1}' if count > 1 else 'one job, nothing to gather'})")
        threads = max(1, args.threads)
        io = stages.io(name, threads=threads, wildcards={w: getattr(args, w) for w in stages.stage_wildcards(name)},
                       shard=shard, gathering=gathering)
        set_threads(threads)
        start = time.perf_counter()
        with held(name):
            if engine() == "dvc" and name == "inputs":  # the first stage DVC runs, before it deletes anything
                handover.refuse_unrecorded()
            stages.execute(name, lambda params, files: stages.runner(name)(params, files), params, io)
            if engine() == "dvc":  # DVC records the file's values once the stage has run
                refuse_changed(args.params, params, name)
        log.info("done in %.1f s", time.perf_counter() - start)
    except Exception as exc:
        message = one_line(exc, engine(), output_folder(name))
        if message is None:
            raise
        fail(name, message)


def refuse_changed(path: str, params: Params, name: str) -> None:
    """Under DVC: refuse to hand DVC results made with other values than params.yaml holds now."""
    moved = params_mod.changed_since(params, stages.TABLE[name].params, path)
    if moved:
        raise ParamsError(f"{path}: {', '.join(moved)} changed while the {name} stage ran; DVC would record "
                          f"the new values over results made with the old: run dvc repro again")


def output_folder(name: str) -> str:
    """The folder holding the stage's outputs (their common folder), for messages."""
    return os.path.commonpath([str(Path(path).parent) for path in stages.layout.FILES[name].values()])


def one_line(exc: BaseException, running: str | None = None, folder: str | None = None) -> str | None:
    """The one-line message of a failure the user can fix (a UserError, a full disk), None for a bug; a damaged
    file's ends with the command that makes it again in the engine `running` (`engine()`)."""
    if isinstance(exc, UserError):
        message = str(exc)
        if "Original Traceback" in message:  # raised in a DataLoader worker: torch prepends the worker's traceback
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        if isinstance(exc, DamagedFile) and exc.stage:
            message += f": {rerun_command(exc.stage, exc.target, running)}"
        return message
    return _disk_full(exc, folder)


def fail(name: str, message: str) -> None:
    """One line naming the stage and the problem, in the log and on stderr; exit status 2."""
    log.error("%s", message)
    print(f"transferlab {name}: error: {message}", file=sys.stderr)
    sys.exit(2)
