"""Frozen backbone features of every split, computed once into .npz files (the extract stage's work), and
gathered from shards."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from transferlab.core.atomic import (
    open_array,
    read_arrays,
    scratch_file,
    size_text,
    write_arrays,
)
from transferlab.core.errors import ParamsError
from transferlab.core.project import SPLITS, data_root
from transferlab.inference import backends
from transferlab.inference.batches import ImageList, compute, device, torch_threads
from transferlab.inference.transforms import augmentation, evaluation
from transferlab.models import backbones
from transferlab.models.backbones import Backbone
from transferlab.settings.sections import Features


def extract(backbone: Backbone, feat: Features, dataset: dict[str, Any],
            frames: dict[str, pd.DataFrame], rows: dict[str, range], out: SimpleNamespace) -> dict[str, Any]:
    """Features (float32, labels, ids, views) of each split's `rows`, into one .npz each (`out.<split>`); returns
    the meta record: the backbone, the engine, and each split's count and rate."""
    classes, root = dataset["classes"], data_root(dataset)
    extractor, dim, info = backbones.load_feature_extractor(backbone)
    dev = device()
    plain = backbone.preprocessing
    model = backbones.Normalized(extractor, plain.mean, plain.std, scale=255)
    min_size, size = plain.resize, plain.crop
    on_gpu = dev.type == "cuda"  # decode JPEGs on the GPU
    threads = torch.get_num_threads()
    streams = 1 if on_gpu else threads
    folder = out.meta.parent
    folder.mkdir(parents=True, exist_ok=True)
    check_room(len(rows["train"]) * (1 + feat.train_views), dim, folder, feat.train_views)
    with scratch_file(folder, ".onnx", "backbone") as onnx_path, torch_threads(threads // streams):
        forward, engine = backends.build(model, feat.engine, feat.precision, dev, size, onnx_path,
                                        threads=threads // streams)
        meta: dict[str, Any] = {**info, **engine, "image_size": size, "device": str(dev), "gpu_decode": on_gpu,
                                "threads": threads, "streams": streams, "torch": torch.__version__,
                                "classes": classes, "splits": {}}
        for split, frame in frames.items():
            part = frame.iloc[rows[split].start:rows[split].stop]
            keys = list(rows[split])  # each image's augmentation seeded by its row in the whole list, as unsharded
            views = [ImageList(root, part, classes, evaluation(plain, normalize=False), min_size, encoded=on_gpu,
                               keys=keys)]
            if split == "train":
                views += [ImageList(root, part, classes, augmentation(plain, normalize=False), min_size,
                                    seed=feat.seed + 1 + v, encoded=on_gpu, keys=keys)
                          for v in range(feat.train_views)]
            meta["splits"][split] = _extract_split(forward, views, dim, feat, getattr(out, split), classes,
                                                   part["path"].to_numpy(dtype=str), streams, dev)
    return meta


def gather(parts_of: list[SimpleNamespace], metas: list[dict[str, Any]], train_views: int,
           out: SimpleNamespace) -> dict[str, Any]:
    """One set of split files from the shards' (`parts_of`, each with its meta record): the same bytes as one
    job's; returns the gathered meta record, each shard's rows and rates kept."""
    meta = {key: value for key, value in metas[0].items() if key != "shard"}
    meta["splits"] = {}
    meta["shards"] = [{"rows": {split: part["rows"] for split, part in m["shard"]["splits"].items()},
                       "splits": m["splits"]} for m in metas]
    out.meta.parent.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        start = time.perf_counter()
        parts = [read_arrays(getattr(shard, split)) for shard in parts_of]
        n_views = 1 + train_views if split == "train" else 1
        dim = parts[0]["features"].shape[1]
        path = getattr(out, split)
        with scratch_file(path.parent, ".npy", path.stem) as buf:  # view-major: each view's rows, shard by shard
            features = open_array(buf, (n_views, sum(len(p["ids"]) // n_views for p in parts), dim))
            np.concatenate([p["features"].reshape(n_views, -1, dim) for p in parts], axis=1, out=features)
            first = [{key: p[key][:len(p[key]) // n_views] for key in ("labels", "ids")} for p in parts]
            _save(path, features.reshape(-1, dim), np.concatenate([f["labels"] for f in first]),
                  np.concatenate([f["ids"] for f in first]), n_views, meta["classes"])
            del features
        images = sum(m["splits"][split]["images"] for m in metas)
        seconds = sum(m["splits"][split]["seconds"] for m in metas)
        meta["splits"][split] = {"images": images, "seconds": round(seconds, 3),
                                 "images_per_s": round(images / seconds, 2) if seconds else None,
                                 "gather_seconds": round(time.perf_counter() - start, 3)}
    return meta


def check_room(rows: int, dim: int, folder: Path, views: int) -> None:
    """Refuse, before any work, training features that would not fit: on disk the scratch array and the .npz
    (2 × float32), in memory the head's float64 copy and its standardised twin (4 × float32)."""
    size = rows * dim * 4
    free = shutil.disk_usage(folder).free
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for need, have, where in ((2 * size, free, f"free disk at {folder}"), (4 * size, memory, "memory")):
        if need > have:
            raise ParamsError(f"params: features.train_views: {views} extra views make {rows:,} training rows × "
                              f"{dim} features = {size_text(size)}; that needs {size_text(need)} of {where}, and "
                              f"there is {size_text(have)}. Use fewer views")


def _extract_split(forward: backends.Forward, views: list[ImageList], dim: int, feat: Features, path: Path,
                   classes: list[str], ids: np.ndarray, streams: int, dev: torch.device) -> dict[str, Any]:
    """Features of every view of one split, filled into a memory-mapped scratch array, then one atomic .npz."""
    n, split = len(ids), path.stem
    start = time.perf_counter()
    with scratch_file(path.parent, ".npy", path.stem) as buf:
        features = open_array(buf, (n * len(views), dim))
        for v, ds in enumerate(views):
            if n:
                compute(forward, ds, features[v * n:(v + 1) * n], f"extract {split}" + (f" view {v}" if v else ""),
                        feat.batch_size, streams, feat.num_workers, dev)
        features.flush()
        _save(path, features, np.asarray(views[0].labels, dtype=np.int64), ids, len(views), classes)
        del features
    seconds = time.perf_counter() - start
    return {"images": n * len(views), "seconds": round(seconds, 3),
            "images_per_s": round(n * len(views) / seconds, 2) if seconds else None}


def _save(path: Path, features: np.ndarray, labels: np.ndarray, ids: np.ndarray, n_views: int,
          classes: list[str]) -> None:
    """One split's .npz: features of every view (view-major), each view's labels and ids, the view of each row."""
    write_arrays(path, {"features": features, "labels": np.tile(labels.astype(np.int64), n_views),
                        "ids": np.tile(ids, n_views), "views": np.repeat(np.arange(n_views), len(ids)),
                        "classes": np.asarray(classes, dtype=str)})
