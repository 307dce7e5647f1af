"""Images as batches, shared by extraction, fine-tuning and prediction: the dataset of one split's images (seeded
augmentation, optional GPU decoding), DataLoaders, CPU streams, and thread budgets."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from transferlab.core.progress import Progress
from transferlab.data.images import decode_jpegs, load_encoded, load_tensor
from transferlab.inference import backends
from transferlab.inference.transforms import for_prediction
from transferlab.models.preprocessing import Preprocessing

_RNG = threading.Lock()


class ImageList(Dataset):
    """Images of one split as (tensor, class index, row); augmented views are seeded per image.

    Image i's view is seeded by `seed` and its key (`keys[i]`, default i): a subsample keyed by its rows in the
    full list sees the same views as the full list. Augmentation leaves torch's global generator as it was.
    A frame without a `label` column (new images to classify) gives class index -1.

    With `encoded`, items are JPEG bytes (other files decoded) and `prepare` decodes and transforms a batch on
    the model's device, so a GPU decodes its own input.
    """

    def __init__(self, root: Path, frame: pd.DataFrame, classes: list[str], transform: Callable,
                 min_size: int | None = None, seed: int | None = None, encoded: bool = False,
                 keys: list[int] | None = None):
        self.paths = [root / p for p in frame["path"]]
        digests = frame["sha256"] if "sha256" in frame else [None] * len(self.paths)
        self.digests = [d if isinstance(d, str) else None for d in digests]  # the index's, checked when read
        self.keys = list(range(len(self.paths))) if keys is None else list(keys)
        lookup = {c: i for i, c in enumerate(classes)}
        self.labels = [lookup[c] for c in frame["label"]] if "label" in frame else [-1] * len(self.paths)
        self.transform, self.min_size, self.seed, self.encoded = transform, min_size, seed, encoded

    def __len__(self) -> int:
        return len(self.paths)

    def view(self, i: int, image: torch.Tensor) -> torch.Tensor:
        """Image i as the model sees it (augmentation seeded by image and `seed`)."""
        if self.seed is None:
            return self.transform(image)
        with _RNG, torch.random.fork_rng(devices=[]):  # streams share the global generator v2 transforms draw from
            torch.manual_seed(self.seed * 1_000_003 + self.keys[i])
            return self.transform(image)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if self.encoded:
            return load_encoded(self.paths[i], self.min_size, self.digests[i]), self.labels[i], i
        return self.view(i, load_tensor(self.paths[i], self.min_size, self.digests[i])), self.labels[i], i

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


def loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    """Batches with `num_workers` processes (one thread each) decoding ahead; pinned memory on CUDA."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available(), generator=generator,
                      collate_fn=_collate_encoded if getattr(dataset, "encoded", False) else None,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)


def compute(forward: backends.Forward, images: ImageList, out: np.ndarray, desc: str, batch_size: int,
            streams: int = 1, num_workers: int = 0, dev: torch.device | None = None) -> None:
    """Fill `out` (rows in dataset order) with forward's outputs for every image, in batches of `batch_size` rows
    from the first (so a shard cut at whole batches computes the unsharded run's batches).

    CPU: `streams` threads each decode a batch and run the engine on it (one thread each), so every core is
    busy all the time and decoding never waits for the model or the model for decoding. `encoded` images (the
    CUDA path): DataLoader workers read the files and the batch is decoded on `dev`.
    """
    with Progress(total=len(images), desc=desc, unit="img") as bar:
        if images.encoded:
            for items, _, rows in loader(images, batch_size, num_workers):
                out[rows.numpy()] = forward(images.prepare(items, rows, dev or device()))
                bar.update(len(rows))
            return

        streams = max(1, streams)

        def one(start: int) -> None:
            stop = min(start + batch_size, len(images))
            out[start:stop] = forward(torch.stack([images[i][0] for i in range(start, stop)]))
            bar.update(stop - start)

        with ThreadPoolExecutor(streams) as pool:
            for _ in pool.map(one, range(0, len(images), batch_size)):
                pass


def outputs(forward: backends.Forward, images: ImageList, width: int, desc: str, batch_size: int,
            dtype: type = np.float32) -> np.ndarray:
    """Forward's outputs (width columns) for every image, one CPU stream per thread, as in extraction."""
    out = np.empty((len(images), width), dtype=dtype)
    streams = torch.get_num_threads()
    with torch_threads(1):  # a small list still keeps every stream busy
        compute(forward, images, out, desc, max(1, min(batch_size, -(-len(images) // streams))), streams)
    return out


def predict_images(forward: backends.Forward, plain: Preprocessing, root: Path, frame: pd.DataFrame,
                   classes: list[str], batch_size: int, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (float64) of the frame's images under the weights' plain preprocessing (with `tta`:
    averaged over TTA_VIEWS), and their class indices (-1 without a label column)."""
    transform, forward, batch_size = for_prediction(plain, forward, batch_size, tta)
    images = ImageList(root, frame, classes, transform, plain.resize)
    proba = outputs(forward, images, len(classes), "predict with TTA" if tta else "predict", batch_size, np.float64)
    return proba, np.asarray(images.labels)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads per stream while the streams run, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
