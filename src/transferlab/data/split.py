"""Deterministic, stratified train/val/test lists, training-set subsampling, and the params naming classes checked."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferlab.core.errors import UserError, check_classes
from transferlab.core.project import SPLITS
from transferlab.data import datasets
from transferlab.settings.sections import Data, Params


class SplitError(UserError):
    """The index cannot be split as asked (a class is too small, official lists missing...)."""


def check_class_names(params: Params, classes: list[str]) -> None:
    """The visualize params that name classes of this dataset, checked right after download, before any training
    (otherwise the visualize stage would fail only after the fine-tune): adversarial_from, and with the fine-tune
    target_class and adversarial_to (without it they name the ImageNet classifier's classes, checked at the inputs
    stage: `backbones.check_visualized_classes`)."""
    vis = params.visualize
    if not vis.enabled:
        return
    keys = ["target_class", "adversarial_from", "adversarial_to"] if params.finetune.enabled else ["adversarial_from"]
    check_classes({key: getattr(vis, key) for key in keys}, classes, "this dataset")  # every key at once: fixed in one round


def stratified(index: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Split each class separately: the named parts get their fraction (≥ 1 image), the rest goes to train."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    parts: dict[str, list[pd.DataFrame]] = {"train": [], **{name: [] for name in names}}
    for label, group in index.groupby("label", sort=True):
        group = group.sort_values("path")
        order = rng.permutation(len(group))
        sizes = [max(1, round(len(group) * fractions[n])) for n in names]
        if len(group) - sum(sizes) < 1:
            need = sum(sizes) + 1
            raise SplitError(
                f"class {label!r} has {len(group)} image(s); splitting it into train + {' + '.join(names)} "
                f"needs at least {need}. Add images, merge or drop the class, or lower the fractions."
            )
        start = 0
        for name, size in zip(names, sizes):
            parts[name].append(group.iloc[order[start:start + size]])
            start += size
        parts["train"].append(group.iloc[order[start:]])
    return {name: pd.concat(frames).sort_values("path", ignore_index=True) for name, frames in parts.items()}


def subsample(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Keep `fraction` of each class (≥ 1 image); smaller fractions give subsets of larger ones."""
    if fraction >= 1:
        return train
    rng = np.random.default_rng(seed)
    kept = []
    for _, group in train.groupby("label", sort=True):
        group = group.sort_values("path")
        keep = max(1, round(len(group) * fraction))
        kept.append(group.iloc[np.sort(rng.permutation(len(group))[:keep])])
    return pd.concat(kept).sort_values("path", ignore_index=True)


def make_splits(index: pd.DataFrame, data: Data, root: Path | None = None) -> dict[str, pd.DataFrame]:
    """train/val/test frames from the index as params `data` asks."""
    seed = data.seed
    classes = sorted(index["label"].unique())
    if len(classes) < 2:
        raise SplitError(f"data.source: the dataset holds {len(classes)} class ({', '.join(map(str, classes))}); a "
                         f"classifier needs at least two (one folder of images per class)")
    if data.split == "official":
        lists = datasets.official_split(root)
        stems = index["path"].map(lambda p: Path(p).stem).map(lists)
        test = index[stems == "test"].reset_index(drop=True)
        trainval = index[stems == "trainval"].reset_index(drop=True)
        if test.empty or trainval.empty:
            raise SplitError("data.split: official: the trainval/test lists match none of the indexed images")
        parts = stratified(trainval, {"val": data.val_fraction}, seed)
        parts["test"] = test
    else:
        parts = stratified(index, {"val": data.val_fraction, "test": data.test_fraction}, seed)
    missing = set(parts["train"]["label"]) - set(parts["test"]["label"])
    if missing:
        raise SplitError(f"classes with no test image under the official split: {sorted(missing)}")
    untrained = sorted(set(classes) - set(parts["train"]["label"]))
    if untrained:
        raise SplitError(f"data.split: classes with no training image after the split: {untrained}")
    parts["train"] = subsample(parts["train"], data.train_fraction, seed)
    kept = [c for c in ("path", "label", "sha256") if c in index]  # sha256: each image is checked when read
    return {name: parts[name][kept] for name in SPLITS}


def summary(parts: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Each split's image count and images per class."""
    return {name: {"images": len(frame), "per_class": frame["label"].value_counts().sort_index().to_dict()}
            for name, frame in parts.items()}
