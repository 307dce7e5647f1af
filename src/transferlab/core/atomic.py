"""Atomic file writes: a killed run never leaves a file that looks complete."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferlab.core.errors import DamagedFile

if TYPE_CHECKING:
    import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    Temporary files a killed run left for the same `path` are removed first (one writer per output: the
    workflow engines never run two jobs writing the same file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove(path.parent, f".{glob.escape(path.name)}.*.part*")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _remove(folder: Path, pattern: str) -> None:
    for leftover in folder.glob(pattern):
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_file(folder: Path | str, suffix: str, name: str) -> Iterator[Path]:
    """A temporary file `name` in `folder` (same disk as the outputs), always removed afterwards; one a killed
    run left under the same name is removed first."""
    _remove(Path(folder), f".scratch-{glob.escape(name)}-*{suffix}")
    fd, tmp = tempfile.mkstemp(prefix=f".scratch-{name}-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def open_array(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A float32 .npy of `shape` memory-mapped for writing, its blocks reserved on disk first: a full disk is then
    an ENOSPC error naming the folder here, not a Bus error (SIGBUS) at whichever page is written first."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        del array
        raise OSError(exc.errno, f"{exc.strerror}: {size_text(path.stat().st_size)} needed", str(path.parent)) from None
    finally:
        os.close(fd)
    return array


def size_text(count: float) -> str:
    """A number of bytes as people read it: GiB from 1 GiB up, MiB below (a small disk is never '0.00 GiB')."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def write_json(path: Path | str, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: Path | str) -> Any:
    """A JSON file a stage wrote; a damaged one is an error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise DamagedFile(f"{path}: not valid JSON ({exc}); re-run the stage that writes it") from None


def read_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """A saved .npz (one split's cached features, say) as arrays; no pickles. A damaged one (a failed CRC, a cut
    archive) is an error naming it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DamagedFile(f"{path}: not a readable array archive ({exc}); re-run the stage that writes it") from None


def write_arrays(path: Path | str, arrays: dict[str, np.ndarray]) -> None:
    """Arrays as one .npz, atomically and byte for byte the same for the same arrays (np.savez stamps each member
    with the time of writing); a memory-mapped array is streamed in chunks, so memory stays flat."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as npz:
        for name, array in arrays.items():
            with npz.open(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


def copy_file(source: Path | str, path: Path | str) -> None:
    """Copy `source` to `path` atomically, as a new file (its time now). Not a hard link: Snakemake may touch an
    output, and a link would make the source look newer to the rules that read it; not keeping the source's
    time either: a copied file older than another input (the source's meta.json, written last) would make
    Snakemake re-run the copy."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


# Columns of the tables the stages write that hold text: paths, class names, digests.
TEXT_COLUMNS = ("path", "label", "sha256", "id", "actual", "predicted", "class")


def read_table(path: Path | str, index_col: str | None = None) -> pd.DataFrame:
    """A CSV a stage wrote, its text columns (TEXT_COLUMNS) exactly as written: pandas' inference would read class
    names such as 0, 007, True or NA as numbers, booleans or missing values."""
    import pandas as pd

    return pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str), keep_default_na=False, na_values=[""],
                       index_col=index_col)


def write_json_if_changed(path: Path, data: Any) -> bool:
    """Write `data` as JSON only where the file holds something else (an unchanged file keeps its time, so
    Snakemake re-runs nothing on it); whether it was written."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True


def read_splits(files: Any) -> dict[str, pd.DataFrame]:
    """Every split's image list, from the split stage's files by name (a namespace with train, val and test)."""
    from transferlab.core.project import SPLITS

    return {split: read_table(getattr(files, split)) for split in SPLITS}


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
