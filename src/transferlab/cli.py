"""What every stage script shares: arguments, thread limits, logging, and clean failures."""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import params as params_mod
from . import stages

log = logging.getLogger("transferlab")

# Errors that mean "bad input": one clear line and exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (params_mod.ParamsError, FileNotFoundError, ValueError)
# Errors of reading a damaged or wrong file (truncated cache, checkpoint holding a pickled object, an image
# replaced by garbage): one line naming the file. Any other exception is a bug and keeps its traceback.
READ_ERRORS: tuple[type[BaseException], ...] = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError)
_PATH_ARGUMENTS = ("path", "checkpoint", "weights_path", "file", "filename", "f")


def unreadable_file(exc: BaseException) -> str | None:
    """The file a read failure was about: the innermost frame's path argument that names an existing file,
    or None when the failure is not a read failure."""
    is_read = isinstance(exc, READ_ERRORS) or (isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc))
    if not is_read or isinstance(exc, FileNotFoundError):
        return None
    found, tb = None, exc.__traceback__
    while tb is not None:
        for name in _PATH_ARGUMENTS:
            value = tb.tb_frame.f_locals.get(name)
            if isinstance(value, (str, Path)) and Path(value).is_file():
                found = str(value)
        tb = tb.tb_next
    return found


def set_threads(threads: int) -> None:
    """Limit torch and BLAS/OpenMP to `threads` (Snakemake's `threads:`, else all cores)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    torch.set_num_threads(threads)


def run_stage(name: str, run: Callable[[dict[str, Any], stages.StageIO], object]) -> None:
    """A stage script's whole body: parse the common arguments (and the stage's sweep wildcards), validate
    params.yaml, and call `run(params, io)` with the stage's files from the table; a stage its switch turns off
    leaves its 'skipped' record instead (the one place that decides it)."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"transferlab stage: {name}")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for torch, BLAS and image decoding (default: all cores)")
    for wildcard in stages.stage_wildcards(name):
        parser.add_argument(f"--{wildcard}", required=True, help=f"the sweep point's {wildcard} (from sweep.*)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [" + name + "] %(message)s")
    try:
        params = params_mod.load(args.params)
        threads = max(1, args.threads)
        io = stages.io(name, threads=threads, wildcards={w: getattr(args, w) for w in stages.stage_wildcards(name)})
        set_threads(threads)
        start = time.perf_counter()
        stages.execute(name, run, params, io)
        log.info("done in %.1f s", time.perf_counter() - start)
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        fail(name, message)


def one_line(exc: BaseException) -> str | None:
    """The one-line message of a failure the user caused (bad params, data or files), None for a bug."""
    if isinstance(exc, USER_ERRORS):
        return str(exc)
    damaged = unreadable_file(exc)
    if damaged is None:
        return None
    reason = str(exc).splitlines()[0][:200] if str(exc) else "damaged"
    return f"{damaged}: cannot be read ({type(exc).__name__}: {reason}); re-run the stage that writes it, or replace it"


def fail(name: str, message: str) -> None:
    """One line naming the stage and the problem, in the log and on stderr; exit status 2."""
    log.error("%s", message)
    print(f"transferlab {name}: error: {message}", file=sys.stderr)
    sys.exit(2)
