"""What every stage script shares: arguments, thread limits, logging, and clean failures."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from . import params as params_mod

log = logging.getLogger("transferlab")

# Errors that mean "bad input": one clear line and exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (params_mod.ParamsError, FileNotFoundError, ValueError)


def set_threads(threads: int) -> None:
    """Limit torch and BLAS/OpenMP to `threads` (Snakemake's `threads:`, else all cores)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits
    import torch

    threadpool_limits(threads)
    torch.set_num_threads(threads)


def run_stage(name: str, body: Callable[[dict[str, Any], argparse.Namespace], Any],
              extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse the common arguments, validate params.yaml, and run a stage's body."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"transferlab stage: {name}")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for torch, BLAS and image decoding (default: all cores)")
    if extra:
        extra(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [" + name + "] %(message)s")
    try:
        params = params_mod.load(args.params)
        set_threads(max(1, args.threads))
        body(params, args)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        print(f"transferlab {name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
