"""The extract stage: frozen backbone features for every split, computed once and cached on disk."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import backbones, engines
from .atomic import atomic_path, read_json, scratch_file, write_json
from .batches import ImageList, compute, device, torch_threads
from .layout import SPLITS, data_root
from .params import ParamsError
from .stages import StageIO
from .transforms import augmentation, evaluation

log = logging.getLogger("transferlab")

def run(params: dict[str, Any], io: StageIO) -> dict[str, Any]:
    """Features (float32, labels, ids, views) of every split in one .npz each, and meta.json."""
    model_params, feat = params["model"], params["features"]
    dataset = read_json(io.input.dataset)
    classes, root = dataset["classes"], data_root(dataset)
    extractor, dim, info = backbones.load_feature_extractor(model_params)
    dev = device()
    plain = backbones.preprocessing(model_params)
    model = backbones.Normalized(extractor, plain.mean, plain.std, scale=255)
    min_size, size = plain.resize, plain.crop
    on_gpu = dev.type == "cuda"  # decode JPEGs on the GPU
    threads = torch.get_num_threads()
    streams = 1 if on_gpu else threads
    out_dir = io.output.meta.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    train_rows = len(pd.read_csv(io.input.splits.train)) * (1 + feat["train_views"])
    check_room(train_rows, dim, out_dir, feat["train_views"])
    with scratch_file(out_dir, ".onnx", "backbone") as onnx_path, torch_threads(threads // streams):
        forward, engine = engines.build(model, feat["engine"], feat["precision"], dev, size, onnx_path,
                                        threads=threads // streams)
        meta: dict[str, Any] = {**info, **engine, "image_size": size, "device": str(dev), "gpu_decode": on_gpu,
                                "threads": threads, "streams": streams, "torch": torch.__version__,
                                "classes": classes, "splits": {}}
        for split in SPLITS:
            frame = pd.read_csv(getattr(io.input.splits, split))
            views = [ImageList(root, frame, classes, evaluation(plain, normalize=False), min_size, encoded=on_gpu)]
            if split == "train":
                views += [ImageList(root, frame, classes, augmentation(plain, normalize=False), min_size,
                                    seed=feat["seed"] + 1 + v, encoded=on_gpu) for v in range(feat["train_views"])]
            meta["splits"][split] = _extract_split(forward, views, dim, feat, getattr(io.output, split), classes,
                                                   frame["path"].to_numpy(dtype=str), streams, dev)
    write_json(io.output.meta, meta)
    for split, stats in meta["splits"].items():
        log.info("%s: %d images in %.1f s (%.1f img/s), %d features", split, stats["images"], stats["seconds"],
                 stats["images_per_s"] or 0, meta["feature_dim"])
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
                              f"{dim} features = {size / 2**30:.2f} GiB; that needs {need / 2**30:.2f} GiB of "
                              f"{where}, and there is {have / 2**30:.2f} GiB. Use fewer views")


def _extract_split(forward: engines.Forward, views: list[ImageList], dim: int, feat: dict[str, Any], path: Path,
                   classes: list[str], ids: np.ndarray, streams: int, dev: torch.device) -> dict[str, Any]:
    """Features of every view of one split, filled into a memory-mapped scratch array, then one atomic .npz."""
    n, split = len(ids), path.stem
    start = time.perf_counter()
    with atomic_path(path) as tmp, scratch_file(path.parent, ".npy", path.stem) as buf:
        features = np.lib.format.open_memmap(buf, mode="w+", dtype=np.float32, shape=(n * len(views), dim))
        for v, ds in enumerate(views):
            compute(forward, ds, features[v * n:(v + 1) * n], f"extract {split}" + (f" view {v}" if v else ""),
                    feat["batch_size"], streams, feat["num_workers"], dev)
        features.flush()
        labels = np.tile(np.asarray(views[0].labels, dtype=np.int64), len(views))
        with open(tmp, "wb") as fh:  # np.savez streams the memmap in chunks: memory stays flat
            np.savez(fh, features=features, labels=labels, ids=np.tile(ids, len(views)),
                     views=np.repeat(np.arange(len(views)), n), classes=np.asarray(classes, dtype=str))
        del features
    seconds = time.perf_counter() - start
    return {"images": n * len(views), "seconds": round(seconds, 3),
            "images_per_s": round(n * len(views) / seconds, 2) if seconds else None}

