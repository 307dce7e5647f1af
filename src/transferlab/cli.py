"""What every stage script shares: arguments, thread limits, logging, and clean failures."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time

from . import params as params_mod
from . import progress, stages
from .errors import UserError

log = logging.getLogger("transferlab")


def _disk_full(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "the output folder"
        return f"{where}: no space left on the device; free some and re-run (nothing half-written was kept)"
    return None


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
        params = params_mod.load(args.params)
        count = stages.shard_count(params, name)
        if (shard is not None and not 0 <= shard < count) or (gathering and count == 1):
            what = f"--shard {shard}" if shard is not None else "--gather"
            raise params_mod.ParamsError(f"{what}: {stages.TABLE[name].shards} is {count} "
                                         f"({f'shards 0 to {count - 1}' if count > 1 else 'one job, nothing to gather'})")
        threads = max(1, args.threads)
        io = stages.io(name, threads=threads, wildcards={w: getattr(args, w) for w in stages.stage_wildcards(name)},
                       shard=shard, gathering=gathering)
        set_threads(threads)
        start = time.perf_counter()
        stages.execute(name, lambda params, files: stages.runner(name)(params, files), params, io)
        log.info("done in %.1f s", time.perf_counter() - start)
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        fail(name, message)


def one_line(exc: BaseException) -> str | None:
    """The one-line message of a failure the user can fix (a UserError, a full disk), None for a bug."""
    if isinstance(exc, UserError):
        message = str(exc)
        if "Original Traceback" in message:  # raised in a DataLoader worker: torch prepends the worker's traceback
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        return message
    return _disk_full(exc)


def fail(name: str, message: str) -> None:
    """One line naming the stage and the problem, in the log and on stderr; exit status 2."""
    log.error("%s", message)
    print(f"transferlab {name}: error: {message}", file=sys.stderr)
    sys.exit(2)
