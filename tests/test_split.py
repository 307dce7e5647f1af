import dataclasses

import pandas as pd
import pytest
from conftest import data_settings

from transferlab.data.split import SplitError, make_splits, stratified, subsample


def frame(counts):
    return pd.DataFrame([{"path": f"{c}/{i:03d}.jpg", "label": c} for c, n in counts.items() for i in range(n)])


DATA = data_settings(split="random", val_fraction=0.2, test_fraction=0.2, train_fraction=1.0, seed=3)


def test_deterministic_and_disjoint():
    index = frame({"a": 50, "b": 20, "c": 7})
    one, two = make_splits(index, DATA), make_splits(index, DATA)
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name])
    paths = [set(part["path"]) for part in one.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert sum(len(p) for p in paths) == len(index)
    other = make_splits(index, dataclasses.replace(DATA, seed=4))
    assert set(other["test"]["path"]) != set(one["test"]["path"])


def test_stratified_proportions():
    parts = make_splits(frame({"a": 50, "b": 20, "c": 7}), DATA)
    assert parts["test"]["label"].value_counts().to_dict() == {"a": 10, "b": 4, "c": 1}
    assert parts["val"]["label"].value_counts().to_dict() == {"a": 10, "b": 4, "c": 1}
    assert parts["train"]["label"].value_counts().to_dict() == {"a": 30, "b": 12, "c": 5}


def test_too_small_class_is_a_clear_error():
    with pytest.raises(SplitError, match=r"class 'c' has 2 image\(s\).*at least 3"):
        stratified(frame({"a": 10, "c": 2}), {"val": 0.2, "test": 0.2}, 0)


def test_train_fraction_subsamples_train_only_and_nests():
    index = frame({"a": 50, "b": 20})
    full = make_splits(index, DATA)
    small = make_splits(index, dataclasses.replace(DATA, train_fraction=0.1))
    tiny = make_splits(index, dataclasses.replace(DATA, train_fraction=0.01))
    pd.testing.assert_frame_equal(full["test"], small["test"])
    assert small["train"]["label"].value_counts().to_dict() == {"a": 3, "b": 1}
    assert tiny["train"]["label"].value_counts().to_dict() == {"a": 1, "b": 1}
    assert set(tiny["train"]["path"]) <= set(small["train"]["path"]) <= set(full["train"]["path"])


def test_subsample_identity_at_one():
    train = frame({"a": 4})
    assert subsample(train, 1.0, 0) is train


def test_official_split(tmp_path):
    (tmp_path / "annotations").mkdir()
    index = pd.DataFrame({"path": [f"images/{b}_{i}.jpg" for b in ("Bengal", "pug") for i in range(6)],
                          "label": [b for b in ("Bengal", "pug") for _ in range(6)]})
    test = [f"{b}_{i}" for b in ("Bengal", "pug") for i in (0, 1)]
    trainval = [f"{b}_{i}" for b in ("Bengal", "pug") for i in range(2, 6)]
    (tmp_path / "annotations" / "test.txt").write_text("".join(f"{s} 1 1 1\n" for s in test))
    (tmp_path / "annotations" / "trainval.txt").write_text("".join(f"{s} 1 1 1\n" for s in trainval))
    parts = make_splits(index, dataclasses.replace(DATA, split="official", val_fraction=0.25), tmp_path)
    assert sorted(parts["test"]["path"].str[7:-4]) == sorted(test)
    assert len(parts["val"]) == 2 and len(parts["train"]) == 6
    assert set(parts["val"]["path"]) | set(parts["train"]["path"]) == {f"images/{s}.jpg" for s in trainval}
