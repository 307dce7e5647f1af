"""Extraction, the head and the metrics on tiny synthetic images with random-init models."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MOBILENET, data_settings, make_tree, mirror_image, need, run_stage, split_into, stage_io
from torchvision import models

from transferlab.core.atomic import read_arrays, read_splits
from transferlab.core.errors import UserError
from transferlab.data import index
from transferlab.evaluate import evaluation
from transferlab.models import backbones
from transferlab.models.weights import WeightsUnavailable
from transferlab.pipeline import shards
from transferlab.pipeline.adapters.evaluate_probe import write
from transferlab.pipeline.layout import files_in
from transferlab.probe import features, head
from transferlab.settings.params import validate
from transferlab.settings.sections import Evaluate, Head


def prepare(tmp_path: Path, classes=None) -> Path:
    src = make_tree(tmp_path / "src", classes or {"ant": 8, "bee": 8, "cat": 8})
    data_dir = tmp_path / "data"
    index.build(data_settings(dataset="folder", source=str(src), label=None), files_in("download", data_dir))
    split_into({"split": "random", "val_fraction": 0.25, "test_fraction": 0.25, "train_fraction": 1.0, "seed": 0},
               data_dir)
    return data_dir


def tiny_params(backbone="resnet18", **features_over):
    return validate({"data": {"dataset": "folder", "source": "."},
                     "model": {"backbone": backbone, "weights": "none", "image_size": 32},
                     "features": {"batch_size": 4, "num_workers": 0, **features_over},
                     "finetune": {"range_test_steps": 6}})


@pytest.mark.parametrize("backbone, dim", [("resnet18", 512), ("vgg11", 4096), ("mobilenet_v3_small", 1024),
                                           ("efficientnet_b0", 1280)])
def test_feature_shapes_per_family(tmp_path, backbone, dim):
    data_dir = prepare(tmp_path)
    meta = run_stage("extract", tiny_params(backbone), stage_io("extract", data_dir, tmp_path / "feat"))
    assert meta["feature_dim"] == dim and meta["backbone"] == backbone and meta["image_size"] == 32
    for name, n in (("train", 12), ("val", 6), ("test", 6)):
        cached = read_arrays(tmp_path / "feat" / f"{name}.npz")
        assert cached["features"].shape == (n, dim) and cached["features"].dtype == np.float32
        assert cached["labels"].shape == (n,) and list(cached["classes"]) == ["ant", "bee", "cat"]
        assert np.isfinite(cached["features"]).all()
        assert meta["splits"][name]["images"] == n
    assert not list((tmp_path / "feat").glob(".*"))  # no temporary files left behind


def test_features_equal_model_penultimate_and_train_views(tmp_path):
    data_dir = prepare(tmp_path)
    p = tiny_params(train_views=2)
    run_stage("extract", p, stage_io("extract", data_dir, tmp_path / "feat"))
    train = read_arrays(tmp_path / "feat" / "train.npz")
    assert train["features"].shape == (36, 512)
    assert (train["views"] == np.repeat([0, 1, 2], 12)).all()
    assert (train["ids"][:12] == train["ids"][12:24]).all()
    assert not np.allclose(train["features"][:12], train["features"][12:24])  # augmented views differ
    # the plain view is exactly the classifier-less network on the preprocessed image
    model, _ = backbones.load_classifier(backbones.resolved(p.model))
    model.fc = torch.nn.Identity()
    first = pd.read_csv(data_dir / "splits" / "train.csv").iloc[0]
    from transferlab.data.images import load_tensor
    from transferlab.inference.transforms import evaluation

    x = evaluation(backbones.resolved(p.model).preprocessing)(load_tensor(tmp_path / "src" / first["path"]))
    with torch.inference_mode():
        expected = model(x[None]).numpy()[0]
    np.testing.assert_allclose(train["features"][0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # seeded: a second run gives the same augmented features
    run_stage("extract", p, stage_io("extract", data_dir, tmp_path / "feat2"))
    np.testing.assert_array_equal(read_arrays(tmp_path / "feat2" / "train.npz")["features"], train["features"])


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_shards_gather_to_the_unsharded_bytes(tmp_path, engine):
    """features.shards: 3, each shard its own job then gathered (Snakemake), gives byte for byte the files of one
    job computing every image, augmented views included; so does one job with shards set (DVC). The validation
    list (6 images, batches of 4) leaves shard 0 empty. An image changed in shard 2's rows changes its record
    alone; the gathering refuses the stale shard, and once it alone runs again gathers one job's bytes."""
    data_dir = prepare(tmp_path)
    whole, gathered, in_one = (tmp_path / name for name in ("whole", "gathered", "in_one"))
    run_stage("extract", tiny_params(engine=engine, train_views=1), stage_io("extract", data_dir, whole))
    sharded = tiny_params(engine=engine, train_views=1, shards=3)
    metas = [run_stage("extract", sharded, stage_io("extract", data_dir, gathered, shard=s)) for s in range(3)]
    assert [m["shard"]["splits"]["val"]["rows"] for m in metas] == [[0, 0], [0, 4], [4, 6]]
    assert [m["splits"]["train"]["images"] for m in metas] == [8, 8, 8]  # 4 images, 2 views each
    assert not gathered.exists()  # a shard writes only its own folder
    shard_one = read_arrays(data_dir.parent / "results/shards/extract/1/train.npz")
    everything = read_arrays(whole / "train.npz")
    assert (shard_one["features"][4:] == everything["features"][12 + 4:12 + 8]).all()  # its rows' augmented view
    meta = run_stage("extract", sharded, stage_io("extract", data_dir, gathered, gathering=True))
    run_stage("extract", sharded, stage_io("extract", data_dir, in_one))
    for split in ("train", "val", "test"):
        assert (gathered / f"{split}.npz").read_bytes() == (whole / f"{split}.npz").read_bytes(), split
        assert (in_one / f"{split}.npz").read_bytes() == (whole / f"{split}.npz").read_bytes(), split
    assert meta["splits"]["train"]["images"] == 24 and len(meta["shards"]) == 3

    mirror_image(data_dir, "val", 5)
    frames, classes = read_splits(stage_io("extract", data_dir).input.splits), ["ant", "bee", "cat"]
    now = [shards.record(frames, classes, sharded.features, s) for s in range(3)]
    assert [now[s] == metas[s]["shard"] for s in range(3)] == [True, True, False]
    with pytest.raises(UserError, match="^results/shards/extract/2: computed from other images"):
        run_stage("extract", sharded, stage_io("extract", data_dir, gathered, gathering=True))
    run_stage("extract", sharded, stage_io("extract", data_dir, gathered, shard=2))
    run_stage("extract", sharded, stage_io("extract", data_dir, gathered, gathering=True))
    run_stage("extract", tiny_params(engine=engine, train_views=1), stage_io("extract", data_dir, whole))
    for split in ("train", "val", "test"):
        assert (gathered / f"{split}.npz").read_bytes() == (whole / f"{split}.npz").read_bytes(), split


def test_killed_extraction_leaves_no_complete_looking_file(tmp_path, monkeypatch):
    data_dir = prepare(tmp_path)
    calls = {"n": 0}
    real = features.compute

    def dies_on_second_split(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "compute", dies_on_second_split)
    with pytest.raises(KeyboardInterrupt):
        run_stage("extract", tiny_params(), stage_io("extract", data_dir, tmp_path / "feat"))
    left = sorted(p.name for p in (tmp_path / "feat").iterdir())
    assert left == ["train.npz"]  # finished split only; no val.npz, no meta.json, no temporary files


def test_atomic_path_removes_partial(tmp_path):
    from transferlab.core.atomic import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("{half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_shared_checkpoint_loads_and_classifies(tmp_path):
    ckpt = need(MOBILENET)
    p = validate({"data": {"dataset": "folder", "source": "."},
                  "model": {"backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1", "checkpoint": str(ckpt)}})
    model, info = backbones.load_classifier(backbones.resolved(p.model))
    assert info["checkpoint_sha256"] == "52038d0acbbca56792d83ac56e0979c1622ebd0ae036366c2676dd1965fe3e22"
    assert not model.training
    extractor, dim, _ = backbones.load_feature_extractor(backbones.resolved(p.model))
    assert dim == 1280 and not any(q.requires_grad for q in extractor.parameters())
    assert len(backbones.class_names(backbones.resolved(p.model))) == 1000


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    p = validate({"data": {"dataset": "folder", "source": "."}, "model": {"backbone": "resnet18"}})
    with pytest.raises(WeightsUnavailable) as err:
        backbones.load_classifier(backbones.resolved(p.model))
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "model.checkpoint" in message


def test_split_classifier_keeps_penultimate():
    from transferlab.models import family_torchvision

    model = models.vgg11(num_classes=10)
    _, dim = family_torchvision.split(model)
    assert dim == 4096 and isinstance(model.classifier[-1], torch.nn.Identity)


def blobs(n=30, classes=3, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, dim)).astype(np.float32) + 3 * np.eye(classes, dim)[y]
    return {"features": X, "labels": y, "classes": np.array([f"c{i}" for i in range(classes)])}


def test_head_chooses_C_and_round_trips(tmp_path):
    train, val = blobs(seed=0), blobs(seed=1)
    model, search = head.fit(train, val, Head([0.001, 1.0], 500, "train"))
    assert search["chosen"].sum() == 1 and list(search["C"]) == [0.001, 1.0]
    best = search.sort_values(["val_log_loss", "C"]).iloc[0]  # lowest validation log-loss, smaller C on a tie
    assert model.named_steps["logisticregression"].C == best["C"]
    head.save(model, tmp_path / "model.npz", ["c0", "c1", "c2"])
    loaded, names = head.load(tmp_path / "model.npz")
    assert names == ["c0", "c1", "c2"]
    np.testing.assert_allclose(head.predict_proba(loaded, val["features"], 3),
                               head.predict_proba(model, val["features"], 3), rtol=1e-10)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as z:  # plain arrays: loads without pickle
        assert z["coef"].shape == (3, 6)


@pytest.mark.parametrize("classes", [2, 3])
def test_folded_linear_matches_pipeline(classes, tmp_path):
    """The head as one linear layer, from the fitted pipeline or read from its file without scikit-learn (the
    fine-tune, export and visualize start without it), gives the pipeline's probabilities."""
    import subprocess
    import sys

    data = blobs(classes=classes)
    model, _ = head.fit(data, data, Head([1.0], 500, "train"))
    head.save(model, tmp_path / "model.npz", [f"c{i}" for i in range(classes)])
    W, b = head.as_linear(model)
    read_W, read_b = head.linear(tmp_path / "model.npz")
    np.testing.assert_array_equal(read_W, W)
    np.testing.assert_array_equal(read_b, b)
    logits = data["features"].astype(np.float64) @ W.T + b
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(soft / soft.sum(1, keepdims=True), model.predict_proba(data["features"]), atol=1e-8)
    code = f"import sys; from transferlab.probe import head; head.linear({str(tmp_path / 'model.npz')!r}); " \
           "print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_metrics_on_hand_made_example(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.3, .6, .1], [.1, .8, .1], [.1, .7, .2], [.2, .2, .6], [.5, .1, .4]])
    got = evaluation.scores(y, proba)
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    f1 = [0.5, 2 * (2 / 3) * 1 / (5 / 3), 2 * 1 * .5 / 1.5]  # a: P=R=1/2; b: P=2/3, R=1; c: P=1, R=1/2
    assert got["macro_f1"] == pytest.approx(np.mean(f1), abs=1e-6)
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([.8, .3, .8, .7, .6, .4])), abs=1e-6)
    assert "top5_accuracy" not in got
    probs = {"train": proba, "val": proba[:4], "test": proba}
    labels = {"train": y, "val": y[:4], "test": y}
    settings = Evaluate(draws=500, confidence=0.95, seed=0, tta=False)
    result = write(evaluation.evaluate("probe", probs, labels, np.array([f"i{i}" for i in range(6)]), ["a", "b", "c"],
                                       settings), files_in("evaluate_probe", tmp_path))
    assert result["train_val_gap"] == pytest.approx(4 / 6 - 3 / 4, abs=1e-6)
    saved = json.loads((tmp_path / "metrics" / "probe.json").read_text())
    assert saved["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    for metric in ("accuracy", "balanced_accuracy", "macro_f1"):  # the interval holds the estimate
        assert saved["interval"][metric]["low"] <= saved[metric] <= saved["interval"][metric]["high"], metric
    assert set(saved["interval"]) == {"accuracy", "balanced_accuracy", "macro_f1"} and "vs_probe" not in saved
    matrix = pd.read_csv(tmp_path / "eval" / "probe" / "confusion_matrix.csv", index_col="actual")
    assert matrix.loc["a"].tolist() == [1, 1, 0] and matrix.loc["c"].tolist() == [1, 0, 1]
    per_class = pd.read_csv(tmp_path / "eval" / "probe" / "per_class.csv")
    assert per_class["recall"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    preds = pd.read_csv(tmp_path / "eval" / "probe" / "predictions.csv")
    assert preds["predicted"].tolist() == ["a", "b", "b", "b", "c", "a"]
    worse = {**probs, "test": np.roll(proba, 1, axis=1)}  # a "fine-tune" that gets other images right
    pair = evaluation.evaluate("finetune", worse, labels, np.array([f"i{i}" for i in range(6)]), ["a", "b", "c"],
                               settings, baseline=preds.iloc[::-1]).metrics["vs_probe"]  # matched by id, not row order
    right = np.roll(proba, 1, axis=1).argmax(1) == y
    assert pair["only_correct"] == {"probe": int((~right & (proba.argmax(1) == y)).sum()),
                                    "finetune": int((right & (proba.argmax(1) != y)).sum())}
    assert pair["difference"] == pytest.approx(right.mean() - 4 / 6, abs=1e-6)
    with pytest.raises(ValueError, match="same test images"):
        evaluation.evaluate("finetune", worse, labels, np.array([f"j{i}" for i in range(6)]), ["a", "b", "c"],
                            settings, baseline=preds)


def test_top5_with_many_classes():
    y = np.arange(6)
    proba = np.eye(6)[(y + 1) % 6] * 0.5 + np.eye(6)[y] * 0.3 + 0.2 / 6
    assert evaluation.scores(y, proba)["top5_accuracy"] == 1.0
    assert evaluation.scores(y, proba)["accuracy"] == 0.0
