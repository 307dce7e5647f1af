"""One run at a time over a project: Snakemake, DVC and `transferlab predict` (reading results) honour one lock.

Snakemake takes it when its jobs are about to start (the Snakefile's `onstart`) and holds it to its end; its jobs
run under it. Under DVC each stage takes it while it runs; between stages DVC holds its own repository lock, and
while a stage runs DVC lists it in `.dvc/tmp/rwlock`: Snakemake checks both, so it never starts between two of
DVC's stages. `transferlab predict` takes it shared: any number of predictions, no run writing under them. The
second comer refuses in one line naming the first. An flock: a killed run leaves nothing to clean up.
Imports no torch.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from transferlab.core.errors import UserError

PATH = "logs/transferlab.lock"
DVC_LOCK, DVC_RWLOCK = ".dvc/tmp/lock", ".dvc/tmp/rwlock"


class RunInProgress(UserError):
    """Another run holds the project."""


def _open(root: Path | str) -> IO[str]:
    path = Path(root) / PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+")  # noqa: SIM115 - held open for as long as the lock is


def _held_by(handle: IO[str]) -> str:
    """Who holds the lock: the exclusive holder's own line, or the predictions reading under a shared lock."""
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        return handle.read().strip() or "another run"
    fcntl.flock(handle, fcntl.LOCK_UN)
    return "transferlab predict (reading results)"


def acquire(root: Path | str, who: str, shared: bool = False) -> IO[str] | None:
    """Take the project's lock (`who` names this run to a second comer); keep the returned file open for as long
    as it is held. Refuses at once, naming the holder, where another run has it. Shared, in a project this user
    cannot write (where no run of theirs can write either), there is nothing to take: None."""
    try:
        handle = _open(root)
    except OSError:
        if shared:
            return None
        raise
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _held_by(handle)
        handle.close()
        raise RunInProgress(f"{Path(root) / PATH}: {holder} is running over this project; wait for it to finish, "
                            f"or stop it") from None
    if not shared:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{who} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})\n")
        handle.flush()
    return handle


@contextlib.contextmanager
def held(root: Path | str, who: str, shared: bool = False) -> Iterator[None]:
    handle = acquire(root, who, shared)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dvc_running(root: Path | str) -> str | None:
    """A line naming a DVC command running over the project (its repository lock held, or a stage of it running),
    None where there is none."""
    root = Path(root)
    try:
        with open(root / DVC_LOCK) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"dvc ({handle.read().strip() or 'a command'} holds {DVC_LOCK})"
    except OSError:
        pass
    try:
        locks = json.loads((root / DVC_RWLOCK).read_text())
    except (OSError, ValueError):
        return None
    for entries in (locks.get("write") or {}).values():
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, dict) and _alive(int(entry.get("pid", 0) or 0)):
                return f"dvc ({entry.get('cmd', 'a command')}, pid {entry['pid']})"
    return None


def for_snakemake(root: Path | str = ".") -> IO[str]:
    """The lock Snakemake holds for its run (its `onstart`), refused while DVC runs over the project."""
    dvc = dvc_running(root)
    if dvc is not None:
        raise RunInProgress(f"{Path(root) / DVC_LOCK}: {dvc} is running over this project; wait for it to finish, "
                            f"or stop it")
    return acquire(root, "snakemake " + " ".join(sys.argv[1:]))
