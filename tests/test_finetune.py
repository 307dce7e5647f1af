"""Fine-tuning mechanics on tiny synthetic images with random-init models."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import stage_io
from test_features_head import prepare, tiny_params
from torch import nn
from torchvision import models

from transferlab import backbones, features, finetune, frozen, head, stages
from transferlab.evaluation import run_finetune
from transferlab.images import load_tensor
from transferlab.params import validate
from transferlab.transforms import evaluation


def net(name: str) -> finetune.FineTuneNet:
    body, linear = backbones.split_classifier(models.get_model(name, weights=None))
    return finetune.FineTuneNet(body, nn.Linear(linear.in_features, 3))


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def prefixes(model: nn.Module, *names: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(names)}


@pytest.mark.parametrize("name, last, second", [
    ("resnet18", ("backbone.layer4.",), ("backbone.layer3.",)),
    ("vgg11", ("backbone.classifier.",), tuple(f"backbone.features.{i}." for i in range(16, 21))),
    ("mobilenet_v2", ("backbone.features.18.",), ("backbone.features.17.",)),
    ("mobilenet_v3_small", ("backbone.classifier.",), ("backbone.features.12.",)),
    ("efficientnet_b0", ("backbone.features.8.",), ("backbone.features.7.",)),
])
def test_unfreeze_policy_per_family(name, last, second):
    model = net(name)
    head_params = prefixes(model, "head.")
    finetune.freeze(model, 0)
    assert trainable(model) == head_params
    finetune.freeze(model, 1)
    assert trainable(model) == head_params | prefixes(model, *last)
    finetune.freeze(model, 2)
    assert trainable(model) == head_params | prefixes(model, *last) | prefixes(model, *second)
    finetune.freeze(model, "all")
    assert trainable(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("train_bn", [False, True])
def test_frozen_blocks_keep_batchnorm_statistics(train_bn):
    torch.manual_seed(0)
    model = net("resnet18")
    finetune.freeze(model, 1)
    finetune.train_mode(model, 1, train_bn)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        assert changed == (train_bn and key.startswith("backbone.layer4.")), key
    assert not model.backbone.layer1.training and model.backbone.layer4.training
    assert model.backbone.layer4[0].bn1.training == train_bn


def ft_params(**over):
    p = tiny_params()
    p["finetune"].update({"epochs": 2, "batch_size": 4, "num_workers": 0, "unfreeze": 1, "lr": 1e-4,
                          "head_lr": 1e-2, "warmup_epochs": 0.5, **over})
    return validate(p)


@pytest.fixture
def probe_setup(tmp_path):
    data_dir = prepare(tmp_path)
    params = ft_params()
    features.run(params, stage_io("extract", data_dir, tmp_path / "feat"))
    train, val = (features.load(tmp_path / "feat" / f"{s}.npz") for s in ("train", "val"))
    model, _ = head.fit(train, val, {"C_grid": [1.0], "max_iter": 500, "refit_on": "train"})
    head.save(model, tmp_path / "probe.npz", [str(c) for c in train["classes"]])
    frozen.run(params, stage_io("frozen_cache", data_dir))  # where the finetune stage reads it: results/frozen
    return tmp_path, data_dir, params, model


def test_warm_start_reproduces_the_probe(probe_setup):
    tmp_path, data_dir, params, probe = probe_setup
    model = finetune.build(params["model"], head.load(tmp_path / "probe.npz")[0])
    test = features.load(tmp_path / "feat" / "test.npz")
    frame = pd.read_csv(data_dir / "splits" / "test.csv")
    classes = json.loads((data_dir / "dataset.json").read_text())["classes"]
    root = data_dir.parent / "src"
    proba, labels = finetune.predict(model, frame, root, classes, params["model"], 4)
    W, b = head.as_linear(probe)
    probe_logits = test["features"].astype(np.float64) @ W.T + b
    with torch.inference_mode():
        plain = evaluation(backbones.preprocessing(params["model"]))
        x = torch.stack([plain(load_tensor(root / p)) for p in frame["path"]])
        model_logits = model(x).numpy()
    np.testing.assert_allclose(model_logits, probe_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(proba, head.predict_proba(probe, test["features"], 3), atol=1e-5)
    assert (labels == test["labels"]).all()


def test_seeded_runs_are_identical_and_outputs_complete(probe_setup):
    tmp_path, data_dir, params, _ = probe_setup
    one, two = (finetune.run(params, stage_io("finetune", data_dir, tmp_path / d, probe=tmp_path / "probe.npz"))
                for d in ("ft1", "ft2"))
    h1, h2 = (pd.read_csv(tmp_path / d / "history.csv") for d in ("ft1", "ft2"))
    pd.testing.assert_frame_equal(h1.drop(columns="seconds"), h2.drop(columns="seconds"))
    assert list(h1.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "head_lr",
                                "seconds"]
    assert one["epochs_run"] == two["epochs_run"] == 2 and one["trainable_parameters"] > 0
    state = torch.load(tmp_path / "ft1" / "model.pt", weights_only=True)
    loaded = finetune.load(params["model"], tmp_path / "ft1" / "model.pt", 3)
    assert torch.equal(loaded.head.weight, state["head.weight"])


def test_disabled_finetune_is_marked_skipped(probe_setup, tmp_path):
    root, data_dir, params, _ = probe_setup
    params["finetune"]["enabled"] = False
    files = stage_io("finetune", data_dir, tmp_path / "ft", probe=root / "probe.npz")
    files.output.model.parent.mkdir(parents=True)
    files.output.model.write_bytes(b"an earlier run's weights")
    summary = stages.execute("finetune", finetune.run, params, files)
    assert summary["skipped"] and not (tmp_path / "ft" / "model.pt").exists()
    evaluated = stage_io("evaluate_finetune", data_dir, tmp_path)
    result = stages.execute("evaluate_finetune", run_finetune, params, evaluated)
    assert json.loads((tmp_path / "metrics" / "finetune.json").read_text()) == result
    assert json.loads((tmp_path / "eval" / "finetune" / "skipped.json").read_text()) == result
    assert result["reason"] == "finetune.enabled: false"


def test_learning_rate_schedule():
    ft = {"warmup_epochs": 1, "epochs": 3, "schedule": "cosine", "step_size": 1, "gamma": 0.5}
    factors = [finetune.lr_factor(s, 10, ft) for s in range(30)]
    assert factors[0] < factors[5] < factors[9] < 1 and factors[10] == pytest.approx(1.0)
    assert factors[29] < 0.01 and all(a >= b for a, b in zip(factors[10:], factors[11:]))
    step = {**ft, "schedule": "step", "warmup_epochs": 0}
    assert [finetune.lr_factor(s, 10, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert finetune.lr_factor(15, 10, {**ft, "schedule": "constant"}) == 1.0
