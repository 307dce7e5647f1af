"""The extract stage: frozen backbone features for every split, computed once and cached on disk."""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms._presets import ImageClassification
from tqdm.auto import tqdm

from . import backbones, engines
from .atomic import atomic_path, read_json, scratch_file, write_json
from .images import decode_jpegs, load_encoded, load_tensor
from .params import ParamsError
from .split import SPLITS
from .transforms import augmentation, evaluation, for_prediction

_RNG = threading.Lock()


class ImageList(Dataset):
    """Images of one split as (tensor, class index, row); augmented views are seeded per image.

    A frame without a `label` column (new images to classify) gives class index -1.

    With `encoded`, items are JPEG bytes (other files decoded) and `prepare` decodes and transforms a batch on
    the model's device, so a GPU decodes its own input.
    """

    def __init__(self, root: Path, frame: pd.DataFrame, classes: list[str], transform: Callable,
                 min_size: int | None = None, seed: int | None = None, encoded: bool = False):
        self.paths = [root / p for p in frame["path"]]
        lookup = {c: i for i, c in enumerate(classes)}
        self.labels = [lookup[c] for c in frame["label"]] if "label" in frame else [-1] * len(self.paths)
        self.transform, self.min_size, self.seed, self.encoded = transform, min_size, seed, encoded

    def __len__(self) -> int:
        return len(self.paths)

    def view(self, i: int, image: torch.Tensor) -> torch.Tensor:
        """Image i as the model sees it (augmentation seeded by image and `seed`)."""
        if self.seed is None:
            return self.transform(image)
        with _RNG:  # streams share torch's global generator, which the v2 transforms draw from
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.transform(image)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.encoded:
            return load_encoded(self.paths[i], self.min_size), self.labels[i], i
        return self.view(i, load_tensor(self.paths[i], self.min_size)), self.labels[i], i

    def prepare(self, items: list[torch.Tensor], rows: torch.Tensor, dev: torch.device) -> torch.Tensor:
        """Decode a batch of `encoded` items on `dev` (one batched nvJPEG call on CUDA) and transform them."""
        jpegs = [k for k, item in enumerate(items) if item.ndim == 1]
        images = [item.to(dev, non_blocking=True) for item in items]
        for k, decoded in zip(jpegs, decode_jpegs([items[k] for k in jpegs], dev)):
            images[k] = decoded
        return torch.stack([self.view(int(r), image) for r, image in zip(rows, images)])


def _collate_encoded(batch: list[tuple[torch.Tensor, int, int]]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    items, labels, rows = zip(*batch)
    return list(items), torch.tensor(labels), torch.tensor(rows)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loader(dataset: ImageList, batch_size: int, num_workers: int, shuffle: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    """Batches with `num_workers` processes (one thread each) decoding ahead; pinned memory on CUDA."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available(), generator=generator,
                      collate_fn=_collate_encoded if dataset.encoded else None,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)


def compute(forward: engines.Forward, images: ImageList, out: np.ndarray, desc: str, batch_size: int,
            streams: int = 1, num_workers: int = 0, dev: torch.device | None = None) -> None:
    """Fill `out` (rows in dataset order) with forward's outputs for every image.

    CPU: `streams` threads each decode a batch and run the engine on it (one thread each), so every core is
    busy all the time and decoding never waits for the model or the model for decoding. `encoded` images (the
    CUDA path): DataLoader workers read the files and the batch is decoded on `dev`.
    """
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        if images.encoded:
            for items, _, rows in loader(images, batch_size, num_workers):
                out[rows.numpy()] = forward(images.prepare(items, rows, dev or device()))
                bar.update(len(rows))
            return

        streams = max(1, streams)
        batch_size = min(batch_size, -(-len(images) // streams))  # a small split still keeps every stream busy

        def one(start: int) -> None:
            stop = min(start + batch_size, len(images))
            out[start:stop] = forward(torch.stack([images[i][0] for i in range(start, stop)]))
            bar.update(stop - start)

        with ThreadPoolExecutor(streams) as pool:
            for _ in pool.map(one, range(0, len(images), batch_size)):
                pass


def outputs(forward: engines.Forward, images: ImageList, width: int, desc: str, batch_size: int,
            dtype: type = np.float32) -> np.ndarray:
    """Forward's outputs (width columns) for every image, one CPU stream per thread, as in extraction."""
    out = np.empty((len(images), width), dtype=dtype)
    streams = torch.get_num_threads()
    with torch_threads(1):
        compute(forward, images, out, desc, batch_size, streams)
    return out


def predict_images(forward: engines.Forward, plain: ImageClassification, root: Path, frame: pd.DataFrame,
                   classes: list[str], batch_size: int, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (float64) of the frame's images under the weights' plain preprocessing (with `tta`:
    averaged over TTA_VIEWS), and their class indices (-1 without a label column)."""
    transform, forward, batch_size = for_prediction(plain, forward, batch_size, tta)
    images = ImageList(root, frame, classes, transform, plain.resize_size[0])
    proba = outputs(forward, images, len(classes), "predict with TTA" if tta else "predict", batch_size, np.float64)
    return proba, np.asarray(images.labels)


def run(params: dict[str, Any], data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write out_dir/{train,val,test}.npz (features, labels, ids, views) and out_dir/meta.json."""
    model_params, feat = params["model"], params["features"]
    dataset = read_json(data_dir / "dataset.json")
    classes, root = dataset["classes"], Path(dataset["root"])
    extractor, dim, info = backbones.load_feature_extractor(model_params)
    dev = device()
    plain = backbones.preprocessing(model_params)
    model = backbones.Normalized(extractor, plain.mean, plain.std, scale=255)
    min_size, size = plain.resize_size[0], plain.crop_size[0]
    on_gpu = dev.type == "cuda"  # decode JPEGs on the GPU
    threads = torch.get_num_threads()
    streams = 1 if on_gpu else threads
    out_dir.mkdir(parents=True, exist_ok=True)
    train_rows = len(pd.read_csv(data_dir / "splits" / "train.csv")) * (1 + feat["train_views"])
    check_room(train_rows, dim, out_dir, feat["train_views"])
    with scratch_file(out_dir, ".onnx", "backbone") as onnx_path, torch_threads(threads // streams):
        forward, engine = engines.build(model, feat["engine"], feat["precision"], dev, size, onnx_path,
                                        threads=threads // streams)
        meta: dict[str, Any] = {**info, **engine, "image_size": size, "device": str(dev), "gpu_decode": on_gpu,
                                "threads": threads, "streams": streams, "torch": torch.__version__,
                                "classes": classes, "splits": {}}
        for split in SPLITS:
            frame = pd.read_csv(data_dir / "splits" / f"{split}.csv")
            views = [ImageList(root, frame, classes, evaluation(plain, normalize=False), min_size, encoded=on_gpu)]
            if split == "train":
                views += [ImageList(root, frame, classes, augmentation(plain, normalize=False), min_size,
                                    seed=feat["seed"] + 1 + v, encoded=on_gpu) for v in range(feat["train_views"])]
            meta["splits"][split] = _extract_split(forward, views, dim, feat, out_dir / f"{split}.npz", classes,
                                                   frame["path"].to_numpy(dtype=str), streams, dev)
    write_json(out_dir / "meta.json", meta)
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


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads per stream while the streams run, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def load(path: Path | str) -> dict[str, np.ndarray]:
    """One split's cached features as arrays."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
