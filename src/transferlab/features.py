"""The extract stage: frozen backbone features for every split, computed once and cached on disk."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import backbones
from .atomic import atomic_path, scratch_file, write_json
from .images import load_rgb
from .split import SPLITS
from .transforms import augmentation


class ImageList(Dataset):
    """Images of one split as (tensor, class index, row); augmented views are seeded per image."""

    def __init__(self, root: Path, frame: pd.DataFrame, classes: list[str], transform: Callable,
                 min_size: int | None = None, seed: int | None = None):
        self.paths = [root / p for p in frame["path"]]
        lookup = {c: i for i, c in enumerate(classes)}
        self.labels = [lookup[c] for c in frame["label"]]
        self.transform, self.min_size, self.seed = transform, min_size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = load_rgb(self.paths[i], self.min_size)
        if self.seed is not None:
            torch.manual_seed(self.seed * 1_000_003 + i)
        return self.transform(image), self.labels[i], i


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
           generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      worker_init_fn=_worker_init, pin_memory=torch.cuda.is_available(), generator=generator,
                      persistent_workers=False)


@torch.inference_mode()
def compute(model: torch.nn.Module, data: DataLoader, out: np.ndarray, desc: str) -> None:
    """Fill `out` (rows in dataset order) with the model's outputs, batch by batch."""
    dev = next(model.parameters()).device
    for images, _, rows in tqdm(data, desc=desc, unit="batch"):
        images = images.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        out[rows.numpy()] = model(images).float().cpu().numpy()


def run(params: dict[str, Any], data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write out_dir/{train,val,test}.npz (features, labels, ids, views) and out_dir/meta.json."""
    model_params, feat = params["model"], params["features"]
    dataset = json.loads((data_dir / "dataset.json").read_text())
    classes, root = dataset["classes"], Path(dataset["root"])
    model, dim, info = backbones.load_feature_extractor(model_params)
    dev = device()
    model = model.to(dev).to(memory_format=torch.channels_last)
    plain = backbones.preprocessing(model_params)
    min_size = plain.resize_size[0]
    meta: dict[str, Any] = {**info, "image_size": plain.crop_size[0], "device": str(dev),
                            "torch": torch.__version__, "classes": classes, "splits": {}}
    for split in SPLITS:
        frame = pd.read_csv(data_dir / "splits" / f"{split}.csv")
        views = [ImageList(root, frame, classes, plain, min_size)]
        if split == "train":
            aug = augmentation(plain)
            views += [ImageList(root, frame, classes, aug, min_size, seed=feat["seed"] + 1 + v)
                      for v in range(feat["train_views"])]
        n = len(frame)
        start = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / f"{split}.npz") as tmp, scratch_file(out_dir, ".npy") as buf:
            features = np.lib.format.open_memmap(buf, mode="w+", dtype=np.float32, shape=(n * len(views), dim))
            for v, ds in enumerate(views):
                compute(model, loader(ds, feat["batch_size"], feat["num_workers"]), features[v * n:(v + 1) * n],
                        desc=f"extract {split}" + (f" view {v}" if v else ""))
            features.flush()
            labels = np.tile(np.asarray(views[0].labels, dtype=np.int64), len(views))
            ids = np.tile(frame["path"].to_numpy(dtype=str), len(views))
            with open(tmp, "wb") as fh:
                np.savez(fh, features=features, labels=labels, ids=ids,
                         views=np.repeat(np.arange(len(views)), n), classes=np.asarray(classes, dtype=str))
            del features
        seconds = time.perf_counter() - start
        meta["splits"][split] = {"images": n * len(views), "seconds": round(seconds, 3),
                                 "images_per_s": round(n * len(views) / seconds, 2) if seconds else None}
    write_json(out_dir / "meta.json", meta)
    return meta


def load(path: Path | str) -> dict[str, np.ndarray]:
    """One split's cached features as arrays."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
