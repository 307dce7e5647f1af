"""A dataset materialised and indexed: every image decoded once, a validated index and the files left out, why."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from transferlab.core.atomic import write_csv, write_json
from transferlab.core.errors import UserError
from transferlab.core.progress import Progress
from transferlab.core.project import resolve
from transferlab.data import datasets
from transferlab.data.images import BadImage, inspect
from transferlab.settings.sections import Data

INDEX_COLUMNS = ["path", "label", "width", "height", "bytes", "sha256"]


def _check(path: Path) -> tuple[int, int, int, str] | str:
    try:
        return inspect(path)
    except BadImage as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc}"


def scan(root: Path, files: list[tuple[str, str]], workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every candidate file; return (index of good images, left-out files with reasons)."""
    paths = [root / rel for rel, _ in files]
    chunksize = max(1, len(paths) // (workers * 16) or 1)
    if workers > 1 and len(paths) > 64:
        with ProcessPoolExecutor(workers) as pool:
            results = list(Progress(pool.map(_check, paths, chunksize=chunksize), total=len(paths), desc="scan images",
                                    unit="img"))
    else:
        results = [_check(p) for p in Progress(paths, desc="scan images", unit="img")]
    good, bad = [], []
    for (rel, label), result in zip(files, results):
        if isinstance(result, str):
            bad.append({"path": rel, "label": label, "reason": result})
        else:
            good.append({"path": rel, "label": label, **dict(zip(INDEX_COLUMNS[2:], result))})
    index = pd.DataFrame(good, columns=INDEX_COLUMNS).sort_values("path", ignore_index=True)
    rejected = pd.DataFrame(bad, columns=["path", "label", "reason"]).sort_values("path", ignore_index=True)
    return index, rejected


def build(data: Data, out: SimpleNamespace, workers: int = 1) -> dict[str, Any]:
    """Materialise the dataset and write the download stage's index, rejected list and dataset summary."""
    raw_dir = out.dataset.parent / "raw"  # archives unpack beside data/dataset.json
    raw_dir.mkdir(parents=True, exist_ok=True)
    given = datasets.materialise(data.dataset, data.source, raw_dir)
    root = resolve(given)
    files, left_out = datasets.candidates(data.dataset, root, data.label or "breed")
    if not files:
        raise UserError(f"data.source: no image files found under {root} for dataset {data.dataset!r}")
    index, rejected = scan(root, files, workers)
    unread = pd.DataFrame(left_out, columns=rejected.columns)
    rejected = pd.concat([rejected, unread], ignore_index=True) if len(unread) else rejected
    if index.empty:
        raise UserError(f"data.source: none of the {len(files)} files under {root} is a readable image")
    classes = sorted(index["label"].unique())
    summary = {
        "dataset": data.dataset,
        "source": data.source,
        "root": given.as_posix(),
        "label": (data.label or "breed") if data.dataset == "oxford_pets" else "folder",
        "images": len(index),
        "classes": classes,
        "counts": {c: int(n) for c, n in index["label"].value_counts().sort_index().items()},
        "left_out": len(rejected),
        "left_out_reasons": {r: int(n) for r, n in rejected["reason"].value_counts().sort_index().items()},
    }
    write_csv(out.rejected, rejected)
    write_json(out.dataset, summary)
    write_csv(out.index, index)  # last: its presence means the stage finished
    return summary
