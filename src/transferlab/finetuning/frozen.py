"""The frozen-prefix cache: the backbone's frozen blocks run once over every view the fine-tune trains and is
scored on, stored memory-mapped on disk; the fine-tune then trains its unfrozen blocks and head from there.

The frozen prefix (every block before the first unfrozen one, in eval mode) is a pure function of its weights
and its input pixels, and the fine-tune seeds each image's augmentation by (epoch, image): so its activations
for each epoch's views can be computed before training, and training from them is the same computation as
training on the fly. The network is cut at the block boundary by torch.fx: the prefix and the suffix share the
backbone's modules, so training the suffix trains the network.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax
from torch import nn
from torch.utils.data import Dataset

from transferlab.core.atomic import (
    atomic_path,
    copy_file,
    open_array,
    read_json,
    scratch_file,
    size_text,
    write_json,
)
from transferlab.core.errors import UserError
from transferlab.core.project import data_root
from transferlab.finetuning.prefix import Uncachable, cut, fingerprint
from transferlab.inference import backends
from transferlab.inference.batches import ImageList, compute, device, torch_threads
from transferlab.inference.transforms import TTA_VIEWS, augmented, evaluation, test_time_views
from transferlab.models import backbones
from transferlab.models.backbones import Backbone
from transferlab.settings import grid
from transferlab.settings.sections import Features, Finetune

log = logging.getLogger("transferlab")

# What a cache may hold besides each augmentation's training views (`train_part`): the plain views of every split
# and the test split's test-time views. The fine-tune needs its candidates' training views and "val"; its
# evaluation "train_plain", "val", "test" and "test_tta"; a sweep point "val" and "test".
EVALUATION_PARTS = ("train_plain", "val", "test", "test_tta")
SWEEP_PARTS = ("val", "test")


def frozen_array(folder: Path, part: str) -> Path:
    """One part of a frozen-prefix cache in its folder (`parts` names them)."""
    return folder / f"{part}.npy"


def train_part(finetune: Finetune, augment: str) -> str:
    """The part holding one augmentation's training views: every epoch's ("train_<name>"), or the plain views
    where the setting is the plain preprocessing (each epoch's view is then the same)."""
    return "train_plain" if grid.is_plain(grid.augments(finetune)[augment]) else f"train_{augment}"


def parts(finetune: Finetune, others: tuple[str, ...]) -> tuple[str, ...]:
    """The training parts of `finetune`'s augmentations, then `others` (EVALUATION_PARTS or SWEEP_PARTS)."""
    training = dict.fromkeys(train_part(finetune, name) for name in grid.augments(finetune))
    return tuple(dict.fromkeys([*training, *others]))


def epochs_part(part: str) -> bool:
    """Whether a part holds one slab per epoch (an augmentation's training views)."""
    return part.startswith("train_") and part != "train_plain"


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of a fine-tune epoch (1-based): new views each epoch, reproducible."""
    return seed + 7919 * epoch


def rows_of(full: pd.DataFrame, part: pd.DataFrame) -> list[int]:
    """The rows of `full` holding `part`'s images (a subsample's images keep their seeds and cached rows)."""
    index = {p: i for i, p in enumerate(full["path"])}
    return [index[p] for p in part["path"]]


def key(backbone: Backbone, finetune: Finetune, frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """What a cache's activations are a function of: weights, cut, augmentation, epochs and seed, and images."""
    images = {s: [len(f), hashlib.sha256("\n".join(f["path"]).encode()).hexdigest()[:16]] for s, f in frames.items()}
    return {"model": backbone.record(), "unfreeze": grid.deepest(finetune), "augment": grid.augments(finetune),
            "epochs": finetune.epochs, "seed": finetune.seed, "images": images}


def size(shape: list[int], finetune: Finetune, counts: dict[str, int], parts: tuple[str, ...]) -> int:
    """Bytes of float32 activations of `shape` for the parts, given each split's number of images."""
    rows = {"train_plain": counts["train"], "val": counts["val"], "test": counts["test"],
            "test_tta": len(TTA_VIEWS) * counts["test"]}
    return 4 * int(np.prod(shape)) * sum(finetune.epochs * counts["train"] if epochs_part(p) else rows[p] for p in parts)


def _views(part: str, frame: pd.DataFrame, rows: range, root: Path, classes: list[str],
           backbone: Backbone, finetune: Finetune, encoded: bool) -> list[ImageList]:
    """The uint8 images of one part's `rows` of its split, one ImageList per epoch for the training views (each
    image's augmentation seeded by its row in the whole split)."""
    plain = backbone.preprocessing
    min_size, frame, keys = plain.resize, frame.iloc[rows.start:rows.stop], list(rows)
    if epochs_part(part):
        transform = augmented(plain, grid.augments(finetune)[part.removeprefix("train_")], normalize=False)
        return [ImageList(root, frame, classes, transform, min_size, epoch_seed(finetune.seed, e), encoded, keys)
                for e in range(1, finetune.epochs + 1)]
    transform = test_time_views(plain) if part == "test_tta" else evaluation(plain, normalize=False)
    return [ImageList(root, frame, classes, transform, min_size, encoded=encoded, keys=keys)]


def build(backbone: Backbone, feat: Features, finetune: Finetune, dataset: dict[str, Any],
          frames: dict[str, pd.DataFrame], folder: Path, parts: tuple[str, ...],
          rows: dict[str, range] | None = None) -> dict[str, Any]:
    """Compute the cache into `folder` (its meta.json last), or, where it cannot pay, only a meta.json saying why.

    `feat` is the extraction machinery (engine, batch size, workers); `finetune` the fine-tune settings the views
    follow; `rows`, each split's rows to compute (a shard; whether the cache pays is decided for the whole
    splits). Returns the meta record.
    """
    meta_path = folder / "meta.json"
    clear(folder)
    record: dict[str, Any] = {"cached": False, "key": key(backbone, finetune, frames)}
    try:
        if finetune.cache == "never":
            raise Uncachable("finetune.cache: never; the fine-tune runs on the fly")
        extractor, _, _ = backbones.load_feature_extractor(backbone)
        for blocks in grid.depths(finetune):
            backbones.check_unfreeze(extractor, blocks, backbone.name)
        prefix, _, boundary = cut(extractor, grid.deepest(finetune))
        crop = backbone.preprocessing.crop
        with torch.inference_mode():
            shape = list(prefix(torch.zeros(1, 3, crop, crop)).shape[1:])
        need = size(shape, finetune, {s: len(f) for s, f in frames.items()}, parts)
        budget = finetune.cache_max_gb * 2**30
        free = shutil.disk_usage(folder).free
        scratch = backends.export_bytes(prefix)  # the ONNX graph it runs from, beside the arrays while they fill
        if need > budget or need + scratch > free:
            which = (f"finetune.cache_max_gb: {finetune.cache_max_gb:g}" if need > budget
                     else f"the {size_text(free)} free at {folder} (with its {size_text(scratch)} ONNX scratch file)")
            raise Uncachable(f"the frozen-prefix cache ({boundary} output {'×'.join(map(str, shape))} per view) "
                             f"would take {size_text(need)}, more than {which}; the fine-tune runs on the fly")
    except Uncachable as exc:
        record["reason"] = str(exc)
        write_json(meta_path, record)
        log.info("no frozen-prefix cache: %s", exc)
        return record
    start = time.perf_counter()
    record.update(boundary=boundary, shape=shape, bytes=need, prefix_sha256=fingerprint(prefix),
                  seeds=[epoch_seed(finetune.seed, e) for e in range(1, finetune.epochs + 1)], parts={})
    rows = rows or {split: range(len(frame)) for split, frame in frames.items()}
    try:
        record["engine"] = _fill(prefix, feat, dataset, frames, rows, folder, parts, shape, backbone, finetune,
                                 record["parts"])
    except OSError:  # a full disk, say: the parts already written go too, freeing their room
        clear(folder)
        raise
    record.update(cached=True, seconds=round(time.perf_counter() - start, 3))
    write_json(meta_path, record)
    log.info("frozen prefix up to %s (%s per view, %s) computed once in %.1f s", boundary,
             "×".join(map(str, shape)), size_text(need), record["seconds"])
    return record


def _fill(prefix: nn.Module, feat: Features, dataset: dict[str, Any],
          frames: dict[str, pd.DataFrame], rows: dict[str, range], folder: Path, parts: tuple[str, ...],
          shape: list[int], backbone: Backbone, finetune: Finetune, stats: dict[str, Any]) -> dict[str, Any]:
    """Run the prefix over each part's views with the extraction engine, into one memory-mapped .npy per part."""
    dev = device()
    on_gpu = dev.type == "cuda"
    threads = torch.get_num_threads()
    streams = 1 if on_gpu else threads
    plain = backbone.preprocessing
    model = backbones.Normalized(prefix, plain.mean, plain.std, scale=255)
    root, classes = data_root(dataset), dataset["classes"]
    with scratch_file(folder, ".onnx", "prefix") as onnx_path, torch_threads(threads // streams):
        forward, engine = backends.build(model, feat.engine, "float32", dev, plain.crop, onnx_path,
                                        threads=threads // streams)
        for part in parts:
            split = part.split("_")[0]
            views = _views(part, frames[split], rows[split], root, classes, backbone, finetune, on_gpu)
            tick = time.perf_counter()
            lead = [len(views), len(rows[split])] if epochs_part(part) else [len(rows[split])]
            inner = [len(TTA_VIEWS)] if part == "test_tta" else []
            run = _flat(forward, len(inner) > 0)
            with atomic_path(frozen_array(folder, part)) as tmp:
                out = open_array(tmp, tuple(lead + inner + shape))
                for e, images in enumerate(views if len(rows[split]) else []):
                    compute(run, images, out[e] if epochs_part(part) else out,
                            f"frozen {part}" + (f" epoch {e + 1}" if epochs_part(part) else ""),
                            feat.batch_size // (len(TTA_VIEWS) if inner else 1) or 1, streams,
                            feat.num_workers, dev)
                out.flush()
                del out
            seconds = time.perf_counter() - tick
            n = int(np.prod(lead + inner))
            stats[part] = _rate(n, seconds)
    return engine


def _rate(views: int, seconds: float) -> dict[str, Any]:
    return {"views": views, "seconds": round(seconds, 3), "views_per_s": round(views / seconds, 2) if seconds else None}


def _flat(forward: backends.Forward, stacked: bool) -> backends.Forward:
    """The forward over batches of stacked test-time views (N, V, 3, H, W) where `stacked`."""
    if not stacked:
        return forward

    def run(images: torch.Tensor) -> np.ndarray:
        out = forward(images.flatten(0, 1))
        return out.reshape(images.shape[0], images.shape[1], *out.shape[1:])

    return run


def clear(folder: Path) -> None:
    """Remove a cache (meta.json first, so a half-removed cache never looks complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for array in folder.glob(frozen_array(folder, "*").name):
        array.unlink()


def copy(source: Path, folder: Path) -> None:
    """Make `folder` the same cache as `source` (a copy of its files: nothing is computed twice)."""
    clear(folder)
    meta = read_json(source / "meta.json")
    for part in meta.get("parts", {}):
        copy_file(frozen_array(source, part), frozen_array(folder, part))
    write_json(folder / "meta.json", meta)


def gather(folders: list[Path], metas: list[dict[str, Any]], folder: Path, backbone: Backbone,
           finetune: Finetune, frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """The cache in `folder` from its shards' `folders` (each with its meta record): the same arrays, byte for
    byte, as one job's. What is of the whole splits (the key, the size) is the current splits', also where a
    shard was computed before they changed."""
    clear(folder)
    record = next((m for m in metas if not m["cached"]), metas[0])  # one shard without a cache: the stage has none
    record = {k: v for k, v in record.items() if k not in ("shard", "parts", "seconds")}
    record["key"] = key(backbone, finetune, frames)
    if record["cached"]:
        record["parts"] = {}
        for part in metas[0]["parts"]:
            arrays = [np.load(frozen_array(shard, part), mmap_mode="r") for shard in folders]
            axis = 1 if epochs_part(part) else 0  # an augmentation's training views are (epoch, image, ...)
            shape = list(arrays[0].shape)
            shape[axis] = sum(a.shape[axis] for a in arrays)
            with atomic_path(frozen_array(folder, part)) as tmp:
                out = open_array(tmp, tuple(shape))
                np.concatenate(arrays, axis=axis, out=out)
                out.flush()
                del out
            record["parts"][part] = _rate(sum(m["parts"][part]["views"] for m in metas),
                                          sum(m["parts"][part]["seconds"] for m in metas))
        record["bytes"] = size(record["shape"], finetune, {s: len(f) for s, f in frames.items()}, tuple(metas[0]["parts"]))
        record["seconds"] = round(sum(m["seconds"] for m in metas), 3)
        record["shards"] = [{"seconds": m["seconds"], "parts": m["parts"]} for m in metas]
    write_json(folder / "meta.json", record)
    log.info("gathered %d shards of the frozen-prefix cache%s", len(folders), "" if record["cached"] else
             f" (none: {record['reason']})")
    return record


class Activations(Dataset):
    """Cached activations of some rows as (tensor, class index, item); for the training views, setting `seed`
    to an epoch's seed picks that epoch's views, as it picks the augmentation of an ImageList."""

    def __init__(self, slabs: np.ndarray | list[np.ndarray], rows: list[int], labels: list[int],
                 seeds: list[int] | None = None):
        """`slabs`: the views, one slab per seed in `seeds` (an epoch's), or one slab where `seeds` is None."""
        self.slabs, self.rows, self.labels, self.seeds = slabs, rows, labels, seeds
        self.slab: np.ndarray = slabs[0]
        self._seed = None if seeds is None else seeds[0]

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        if self.seeds is None or value not in self.seeds:
            raise UserError(f"the frozen-prefix cache holds no views for augmentation seed {value} "
                             f"(it holds {self.seeds}); re-run frozen_cache")
        self.slab, self._seed = self.slabs[self.seeds.index(value)], value

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return torch.from_numpy(np.array(self.slab[self.rows[i]])), self.labels[i], i


@dataclass(frozen=True)
class Cache:
    """A computed cache, checked against what the caller is about to run: open it with `Cache.open`."""

    folder: Path
    meta: dict[str, Any]
    frames: dict[str, pd.DataFrame]
    classes: list[str]

    @staticmethod
    def open(folder: Path, backbone: Backbone, finetune: Finetune, frames: dict[str, pd.DataFrame],
             classes: list[str]) -> Cache | None:
        """The cache in `folder` for these params and (full) splits, or None (the log says why: not computed, or
        `finetune.cache: never`). A cache made for other params or images is an error, never used."""
        meta = read_json(folder / "meta.json")
        if not meta.get("cached"):
            log.info("fine-tune on the fly: %s", meta.get("reason", "no frozen-prefix cache"))
            return None
        expected = json.loads(json.dumps(key(backbone, finetune, frames)))
        if meta["key"] != expected:
            differ = sorted(k for k in expected if meta["key"].get(k) != expected[k])
            raise UserError(f"{folder}: the frozen-prefix cache was made for other {', '.join(differ)}; "
                             f"re-run the stage that makes it (frozen_cache or sweep_frozen)")
        return Cache(folder, meta, frames, classes)

    def tail(self, net: nn.Module) -> nn.Sequential | None:
        """The network after the cached prefix (the backbone's suffix, then the head), or None (logged) where the
        network's prefix weights are not the ones the cache was computed with."""
        prefix, suffix, _ = cut(net.backbone, self.meta["key"]["unfreeze"])
        if fingerprint(prefix) != self.meta["prefix_sha256"]:
            log.warning("%s: the network's frozen blocks differ from the cached ones; running on the fly", self.folder)
            return None
        return nn.Sequential(suffix, net.head)

    def activations(self, part: str, frame: pd.DataFrame, training: bool = False) -> Activations:
        """The cached part for the images of `frame` (a split or a subsample); `training`: as the training views
        of every epoch (an augmentation's part holds one slab per epoch; the plain views serve every epoch)."""
        array = np.load(frozen_array(self.folder, part), mmap_mode="r")
        lookup = {c: i for i, c in enumerate(self.classes)}
        rows = rows_of(self.frames[part.split("_")[0]], frame)
        seeds = self.meta["seeds"] if training else None
        slabs = array if epochs_part(part) else [array] * len(seeds or [None])
        return Activations(slabs, rows, [lookup[c] for c in frame["label"]], seeds)

    def probabilities(self, tail: nn.Module, part: str, frame: pd.DataFrame, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (float64; test-time views averaged) and class indices of `frame`'s images."""
        data = self.activations(part, frame)
        dev = device()
        tail = tail.to(dev).eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                stack = torch.from_numpy(np.array(data.slab[data.rows[start:start + batch_size]])).to(dev)
                views = stack.shape[1] if part == "test_tta" else 1
                logits = tail(stack.flatten(0, 1) if views > 1 else stack).float().cpu().numpy()
                proba = softmax(logits.astype(np.float64), axis=1)
                out.append(proba.reshape(len(stack), views, -1).mean(1))
        return np.concatenate(out), np.asarray(data.labels)
