"""A user's folder walked once, the same way wherever it is read (the inputs' manifests, the download's index).

Hidden files and folders are left out. A file link is followed while it leads to a file inside the folder; a
folder link is never followed (a cycle would never end, and a folder inside would be read twice). Every link not
followed is listed with its reason, so it goes to `rejected.csv` and nothing behind it is read or hashed.
Imports no torch.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

LEAVES = "a link leaving the dataset folder"


def _problem(path: Path, real_root: Path) -> str:
    """Why an entry is not read ('' for a file, or a link to a file, inside the folder)."""
    if not path.is_symlink():
        return "" if path.is_dir() or path.is_file() else "not a regular file (a pipe, a socket or a device)"
    try:
        target = path.resolve(strict=True)
    except OSError as exc:
        return "a link loop" if exc.errno == errno.ELOOP else "a broken link (its target is missing)"
    except RuntimeError:  # pathlib's own loop detection
        return "a link loop"
    if not target.is_relative_to(real_root):
        return LEAVES
    if target.is_dir():
        if path.parent.resolve().is_relative_to(target):
            return f"a link cycle (leads back to {target.relative_to(real_root).as_posix() or '.'})"
        return "a link to another folder of the dataset (its files are read there, once)"
    return "" if target.is_file() else "not a regular file (a pipe, a socket or a device)"


def walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every file under `folder` (sorted, hidden ones left out), and every entry not read with its reason."""
    real_root = folder.resolve()
    files: list[Path] = []
    refused: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames + sorted(f for f in filenames if not f.startswith(".")):
            problem = _problem(here / name, real_root)
            if problem:
                refused.append((here / name, problem))
            elif name in filenames:
                files.append(here / name)
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return sorted(files), sorted(refused)
