"""Fine-tuning mechanics on tiny synthetic images with random-init models."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import finetune_settings, resolved_backbone, run_stage, stage_io
from test_features_head import prepare, tiny_params
from torch import nn

from transferlab.core.atomic import read_arrays
from transferlab.data.images import load_tensor
from transferlab.finetuning import finetune, frozen, network, training, tuning
from transferlab.finetuning.prefix import fingerprint
from transferlab.inference.transforms import evaluation
from transferlab.models import backbones
from transferlab.pipeline import stages
from transferlab.probe import head, selection
from transferlab.settings.params import validate
from transferlab.settings.sections import Head


def net(name: str) -> network.FineTuneNet:
    body, dim = backbones.architecture(resolved_backbone(name))
    return network.FineTuneNet(body, nn.Linear(dim, 3))


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
    ("timm/resnet18", ("backbone.layer4.",), ("backbone.layer3.",)),
    ("timm/convnext_atto", ("backbone.stages.3.", "backbone.head.norm."), ("backbone.stages.2.",)),
    ("timm/vit_tiny_patch16_224", ("backbone.blocks.11.", "backbone.norm."), ("backbone.blocks.10.",)),
])
def test_unfreeze_policy_per_family(name, last, second):
    model = net(name)
    head_params = prefixes(model, "head.")
    network.freeze(model, 0)
    assert trainable(model) == head_params
    network.freeze(model, 1)
    assert trainable(model) == head_params | prefixes(model, *last)
    network.freeze(model, 2)
    assert trainable(model) == head_params | prefixes(model, *last) | prefixes(model, *second)
    network.freeze(model, "all")
    assert trainable(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("train_bn", [False, True])
def test_frozen_blocks_keep_batchnorm_statistics(train_bn):
    torch.manual_seed(0)
    model = net("resnet18")
    network.freeze(model, 1)
    network.train_mode(model, 1, train_bn)
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
    return tiny_params().updated(finetune={
        "epochs": 2, "batch_size": 4, "num_workers": 0, "unfreeze": 1, "lr": 1e-4, "head_lr": 1e-2,
        "warmup_epochs": 0.5, "augment": "strong", "interpolate": [1.0], **over})


@pytest.fixture
def probe_setup(tmp_path):
    data_dir = prepare(tmp_path)
    params = ft_params()
    run_stage("extract", params, stage_io("extract", data_dir, tmp_path / "feat"))
    train, val = (read_arrays(tmp_path / "feat" / f"{s}.npz") for s in ("train", "val"))
    model, _ = head.fit(train, val, Head([1.0], 500, "train"))
    head.save(model, tmp_path / "probe.npz", [str(c) for c in train["classes"]])
    run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir))  # where the finetune stage reads it: results/frozen
    return tmp_path, data_dir, params, model


def test_warm_start_reproduces_the_probe(probe_setup):
    tmp_path, data_dir, params, probe = probe_setup
    model = network.build(backbones.resolved(params.model), head.linear(tmp_path / "probe.npz"))
    test = read_arrays(tmp_path / "feat" / "test.npz")
    frame = pd.read_csv(data_dir / "splits" / "test.csv")
    classes = json.loads((data_dir / "dataset.json").read_text())["classes"]
    root = data_dir.parent / "src"
    proba, labels = finetune.predict(model, frame, root, classes, backbones.resolved(params.model), 4)
    W, b = head.as_linear(probe)
    probe_logits = test["features"].astype(np.float64) @ W.T + b
    with torch.inference_mode():
        plain = evaluation(backbones.resolved(params.model).preprocessing)
        x = torch.stack([plain(load_tensor(root / p)) for p in frame["path"]])
        model_logits = model(x).numpy()
    np.testing.assert_allclose(model_logits, probe_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(proba, head.predict_proba(probe, test["features"], 3), atol=1e-5)
    assert (labels == test["labels"]).all()


def test_seeded_runs_are_identical_and_outputs_complete(probe_setup):
    tmp_path, data_dir, params, _ = probe_setup
    one, two = (run_stage("finetune", params, stage_io("finetune", data_dir, tmp_path / d, probe=tmp_path / "probe.npz"))
                for d in ("ft1", "ft2"))
    h1, h2 = (pd.read_csv(tmp_path / d / "history.csv") for d in ("ft1", "ft2"))
    pd.testing.assert_frame_equal(h1.drop(columns="seconds"), h2.drop(columns="seconds"))
    assert list(h1.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "head_lr",
                                "seconds"]
    assert one["epochs_run"] == two["epochs_run"] == 2 and one["trainable_parameters"] > 0
    state = torch.load(tmp_path / "ft1" / "model.pt", weights_only=True)
    loaded = network.load(backbones.resolved(params.model), tmp_path / "ft1" / "model.pt", 3)
    assert torch.equal(loaded.head.weight, state["head.weight"])


def test_disabled_finetune_is_marked_skipped(probe_setup, tmp_path):
    root, data_dir, params, _ = probe_setup
    params = params.updated(finetune={"enabled": False})
    files = stage_io("finetune", data_dir, tmp_path / "ft", probe=root / "probe.npz")
    files.output.model.parent.mkdir(parents=True)
    files.output.model.write_bytes(b"an earlier run's weights")
    summary = stages.execute("finetune", stages.runner("finetune"), params, files)
    assert summary["skipped"] and not (tmp_path / "ft" / "model.pt").exists()
    evaluated = stage_io("evaluate_finetune", data_dir, tmp_path)
    result = stages.execute("evaluate_finetune", stages.runner("evaluate_finetune"), params, evaluated)
    assert json.loads((tmp_path / "metrics" / "finetune.json").read_text()) == result
    assert json.loads((tmp_path / "eval" / "finetune" / "skipped.json").read_text()) == result
    assert result["reason"] == "finetune.enabled: false"


def test_learning_rate_schedule():
    cosine = finetune_settings(warmup_epochs=1, epochs=3, schedule="cosine", step_size=1, gamma=0.5)
    factors = [training.lr_factor(s, 10, cosine) for s in range(30)]
    assert factors[0] < factors[5] < factors[9] < 1 and factors[10] == pytest.approx(1.0)
    assert factors[29] < 0.01 and all(a >= b for a, b in zip(factors[10:], factors[11:]))
    step = dataclasses.replace(cosine, schedule="step", warmup_epochs=0)
    assert [training.lr_factor(s, 10, step) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert training.lr_factor(15, 10, dataclasses.replace(cosine, schedule="constant")) == 1.0


def test_search_trains_every_candidate_from_the_same_start_and_keeps_the_rule_s_choice(probe_setup):
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(finetune=dict(lr=[1e-5, 1e-3], head_lr=[1e-2, 1e-1]))
    files = stage_io("finetune", data_dir, tmp_path / "grid", probe=tmp_path / "probe.npz")
    summary = run_stage("finetune", params, files)
    search = pd.read_csv(files.output.search)
    assert summary["candidates"] == 4 and search["candidate"].nunique() == 4
    start = network.build(backbones.resolved(params.model), head.linear(tmp_path / "probe.npz"))
    start = start.to(memory_format=torch.channels_last)
    assert set(search["start_sha256"]) == {fingerprint(start)[:16]}  # each candidate from the warm start
    assert set(search["state"]) <= {"complete", "pruned"} and (search["epoch"] == 0).sum() == 4
    start = search[search["epoch"] == 0]  # epoch 0: the same start, scored once, in every candidate's history
    assert start["val_loss"].nunique() == 1 and start["train_loss"].isna().all()
    kept = tuning.scores(search)  # the lowest loss among the epochs no worse than the start in accuracy
    for c, rows in search.groupby("candidate"):
        allowed = rows[rows["val_accuracy"] >= rows["val_accuracy"].iloc[0]]
        assert kept.loc[c, "val_log_loss"] == allowed["val_loss"].min()
    best = kept["val_log_loss"]
    chosen = search.loc[search["chosen"], "candidate"].unique()
    assert len(chosen) == 1 and best[chosen[0]] == best.min()
    assert summary["best_val_loss"] == pytest.approx(best.min(), abs=1e-6)
    row = search[search["candidate"] == chosen[0]].iloc[0]
    assert (summary["lr"], summary["head_lr"]) == (row["lr"], row["head_lr"])
    history = pd.read_csv(files.output.history)  # the chosen candidate's epochs, and its weights
    np.testing.assert_allclose(history["val_loss"], search.loc[search["chosen"], "val_loss"])
    live = files.output.live.parent  # every candidate's epochs through DVCLive, and the choice
    assert json.loads(files.output.live.read_text())["chosen"] == {
        k: summary[k] for k in ("lr", "head_lr", "weight_decay", "best_val_loss", "best_epoch", "candidates")}
    for (lr, head_lr), rows in search[search["epoch"] > 0].groupby(["lr", "head_lr"]):
        logged = pd.read_csv(live / "plots" / "metrics" / f"lr_{lr:.0e}" / f"head_lr_{head_lr:.0e}" / "val" / "loss.tsv",
                             sep="\t")
        assert logged["step"].tolist() == list(range(len(rows)))
        np.testing.assert_allclose(logged["loss"], rows["val_loss"], rtol=1e-6)
    classes = json.loads((data_dir / "dataset.json").read_text())["classes"]
    saved = network.load(backbones.resolved(params.model), files.output.model, len(classes))  # the chosen one
    val = pd.read_csv(data_dir / "splits" / "val.csv")
    proba, labels = finetune.predict(saved, val, data_dir.parent / "src", classes, backbones.resolved(params.model), 4)
    val_loss = -np.log(proba[np.arange(len(labels)), labels]).mean()
    assert val_loss == pytest.approx(summary["best_val_loss"], abs=1e-4)


def test_a_one_value_list_is_the_scalar_run_and_the_range_test_changes_nothing(probe_setup):
    """The stage at lr 1e-4 (which runs the range test for its report first) and [1e-4] without the range test:
    the same epochs, the same weights."""
    tmp_path, data_dir, params, probe = probe_setup
    params = params.updated(finetune={"lr": 1e-4})
    files = stage_io("finetune", data_dir, tmp_path / "scalar", probe=tmp_path / "probe.npz")
    summary = run_stage("finetune", params, files)
    assert summary["range_test"]["ran"] and summary["candidates"] == 1
    logged = pd.read_csv(files.output.live.parent / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")
    np.testing.assert_allclose(logged["loss"], pd.read_csv(files.output.history)["train_loss"][1:], rtol=1e-6)
    dataset = json.loads((data_dir / "dataset.json").read_text())
    frames = {s: pd.read_csv(data_dir / "splits" / f"{s}.csv") for s in ("train", "val", "test")}
    listed_rate, backbone = dataclasses.replace(params.finetune, lr=[1e-4]), backbones.resolved(params.model)
    cache = frozen.Cache.open(data_dir.parent / "results" / "frozen", backbone, listed_rate, frames, dataset["classes"])
    listed = finetune.tune(backbone, listed_rate, head.as_linear(probe), data_dir.parent / "src", frames,
                           dataset["classes"], cache)
    assert not listed.summary["range_test"]["ran"]
    pd.testing.assert_frame_equal(pd.read_csv(files.output.history).drop(columns="seconds"),
                                  listed.history.drop(columns="seconds"), check_exact=False, rtol=1e-12)
    saved = torch.load(files.output.model, weights_only=True)
    assert all(torch.equal(saved[k], v.cpu()) for k, v in listed.net.state_dict().items())
    same = ("lr", "head_lr", "weight_decay", "epochs_run", "best_epoch", "best_val_loss", "candidates", "searched")
    assert {k: summary[k] for k in same} == {k: listed.summary[k] for k in same}


def test_the_rule_keeps_the_lowest_validation_loss_and_the_smaller_rate_where_equal():
    def search(losses, start=(0.9, 0.5), accuracy=0.5):
        rows = [{"candidate": i, "augment": "none", "unfreeze": 1, "lr": lr, "head_lr": 1e-3, "weight_decay": 0.0,
                 "epoch": e, "val_loss": start[0] if e == 0 else loss + 0.1 * (e - 1),
                 "val_accuracy": start[1] if e == 0 else accuracy, "augment_rank": 0, "depth": 1.0}
                for i, (lr, loss) in enumerate(losses) for e in (0, 1, 2)]
        return pd.DataFrame(rows)

    assert tuning.chosen(search([(1e-4, 0.3), (1e-5, 0.2), (3e-5, 0.25)])) == 1
    assert tuning.chosen(search([(1e-4, 0.2), (1e-5, 0.2)])) == 1  # equal: the smaller rate
    assert tuning.chosen_row(search([(1e-4, 0.2), (1e-5, 0.3)]))["lr"] == 1e-4
    # every candidate worse than the start: epoch 0 is kept, whichever candidate carries it
    assert tuning.chosen_row(search([(1e-4, 1.2), (1e-5, 1.0)]))["best_epoch"] == 0
    # a lower loss bought with fewer right answers than the start is not kept
    assert tuning.chosen_row(search([(1e-4, 0.2)], start=(0.9, 0.6), accuracy=0.55))["best_epoch"] == 0
    probe = pd.DataFrame({"C": [10.0, 0.1, 1.0], "val_log_loss": [0.5, 0.5, 0.7]})
    assert selection.choose(probe, head.SIMPLER) == 1  # the probe's C: the same rule, the smaller C where equal


def test_range_test_suggests_a_tenth_of_the_edge_and_auto_searches_up_to_it():
    rates = np.geomspace(1e-7, 1, 80)
    loss = np.where(rates < 1e-3, 0.1, 0.1 * (rates / 1e-3) ** 2)  # flat from the warm start, then climbing
    curve = pd.DataFrame({"lr": rates, "loss": loss, "smoothed": tuning.smoothed(list(loss))})
    edge = curve["lr"].iloc[tuning.edge(curve)]
    assert 1e-3 < edge < 3e-3 and tuning.suggest(curve) == pytest.approx(edge / 10)
    assert tuning.diverged([0.1] * 11 + [0.5]) and tuning.diverged([0.1, float("nan")])
    assert not tuning.diverged([0.01] + [0.1] * 11)  # an unsettled first batch is no reference
    auto = finetune_settings(lr="auto", head_lr=[1e-3, 1e-2], weight_decay=0.0, unfreeze=2, augment="strong")
    grid = tuning.candidates(auto, 2e-5)
    assert [c["lr"] for c in grid] == pytest.approx([2e-5, 2e-5, 6e-5, 6e-5, 2e-4, 2e-4])
    assert [c["head_lr"] for c in grid[:2]] == [1e-3, 1e-2]
    common = {"augment": "strong", "weight_decay": 0.0}
    assert tuning.candidates(dataclasses.replace(auto, lr=[1e-5, 1e-4], unfreeze=0)) == [
        {**common, "unfreeze": 0, "lr": 1e-5, "head_lr": 1e-3}, {**common, "unfreeze": 0, "lr": 1e-5, "head_lr": 1e-2}]
    both = tuning.candidates(dataclasses.replace(auto, lr=[1e-5], head_lr=1e-3, unfreeze=[0, 2], augment=[
        "none", {"scale": [0.9, 1], "flip": False, "rotation": 0, "jitter": 0}]))
    assert [(c["augment"], c["unfreeze"]) for c in both] == [("none", 0), ("none", 2), ("custom", 0), ("custom", 2)]


def test_lr_auto_runs_the_range_test_and_searches_around_its_suggestion(probe_setup):
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(finetune=dict(lr="auto", range_test_steps=20))
    files = stage_io("finetune", data_dir, tmp_path / "auto", probe=tmp_path / "probe.npz")
    summary = run_stage("finetune", params, files)
    curve = pd.read_csv(files.output.range_test)
    assert summary["range_test"]["ran"] and len(curve) == summary["range_test"]["steps"] > 0
    assert curve["lr"].is_monotonic_increasing and curve["lr"].iloc[0] == pytest.approx(tuning.RANGE[0])
    suggested = summary["range_test"]["suggested_lr"]
    assert suggested == pytest.approx(tuning.suggest(curve))
    assert summary["searched"]["lr"] == pytest.approx([suggested * f for f in tuning.AROUND])
    assert summary["candidates"] == 3


@pytest.mark.parametrize("cache", ["auto", "never"])
def test_two_processes_train_as_one(probe_setup, cache):
    """finetune.devices: 2 (DistributedDataParallel, gloo): the same global batches, each process its slice, the
    gradients averaged; per-epoch losses within 1e-5 of one process, from the frozen-prefix cache and on the fly
    (12 training images in batches of 5: each batch splits 3 / 2, the last one 1 / 1)."""
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(finetune=dict(epochs=2, batch_size=5, cache=cache, range_test_steps=0))
    run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir, tmp_path / f"frozen-{cache}"))
    histories = []
    for devices in (1, 2):
        params = params.updated(finetune={"devices": devices})
        summary = run_stage("finetune", params, stage_io("finetune", data_dir, tmp_path / f"ft-{cache}-{devices}",
                                                probe=tmp_path / "probe.npz",
                                                frozen=tmp_path / f"frozen-{cache}" / "meta.json"))
        assert summary["from_cache"] == (cache == "auto") and summary["epochs_run"] == 2
        histories.append(pd.read_csv(tmp_path / f"ft-{cache}-{devices}" / "history.csv"))
    columns = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    np.testing.assert_allclose(histories[1][columns], histories[0][columns], rtol=1e-5, atol=1e-7)
    one, two = (torch.load(tmp_path / f"ft-{cache}-{d}" / "model.pt", weights_only=True) for d in (1, 2))
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)


def test_two_processes_refuse_batchnorm_statistics_per_process():
    from transferlab.core.errors import ParamsError

    with pytest.raises(ParamsError, match="finetune.devices: 2 with finetune.train_bn: true would keep BatchNorm"):
        validate({"finetune": {"devices": 2, "train_bn": True}})



def test_the_start_is_handed_on_when_every_candidate_is_worse(probe_setup, caplog):
    """Rates that wreck the warm start: no epoch beats epoch 0 on validation, so the stage saves the start itself
    (the probe's head on the frozen backbone), says it did not improve, and warns naming the diverged candidates."""
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(finetune=dict(lr=[0.5, 2.0], head_lr=5.0, weight_decay=0.0, range_test_steps=0,
                                          interpolate=[0.0, 1.0]))
    files = stage_io("finetune", data_dir, tmp_path / "wrecked", probe=tmp_path / "probe.npz")
    with caplog.at_level("WARNING", logger="transferlab"):
        summary = run_stage("finetune", params, files)
    assert not summary["improved"] and summary["best_epoch"] == 0 and summary["interpolation"] == []
    assert summary["best_val_loss"] == summary["start"]["val_loss"] and len(summary["diverged"]) == 2
    assert "2 of 2 candidates diverged on validation" in caplog.text and "the start is handed on" in caplog.text
    start = network.build(backbones.resolved(params.model), head.linear(tmp_path / "probe.npz")).state_dict()
    saved = torch.load(files.output.model, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in start.items())
    search = pd.read_csv(files.output.search)
    assert (search[search["epoch"] > 0]["val_loss"] > summary["start"]["val_loss"]).all()


def test_interpolation_ends_are_the_start_and_the_fine_tune(probe_setup):
    tmp_path, data_dir, params, probe = probe_setup
    begin = training.snapshot(network.build(backbones.resolved(params.model), head.linear(tmp_path / "probe.npz")))
    tuned = {k: v.clone() for k, v in begin.items()}
    tuned["head.weight"] += 1.0
    tuned["backbone.layer4.0.conv1.weight"] *= 1.5
    for alpha, expected in ((0.0, begin), (1.0, tuned)):
        mixed = finetune.mixed(begin, tuned, alpha)
        assert all(torch.equal(mixed[k], expected[k]) for k in begin), alpha
    half = finetune.mixed(begin, tuned, 0.5)
    torch.testing.assert_close(half["head.weight"], begin["head.weight"] + 0.5)
    assert half["backbone.conv1.weight"] is not begin["backbone.conv1.weight"]  # a copy, bit for bit
    assert torch.equal(half["backbone.conv1.weight"], begin["backbone.conv1.weight"])
    dataset = json.loads((data_dir / "dataset.json").read_text())
    frames = {s: pd.read_csv(data_dir / "splits" / f"{s}.csv") for s in ("train", "val", "test")}
    backbone = backbones.resolved(params.model)
    net = network.build(backbone, head.linear(tmp_path / "probe.npz"))
    score = finetune.scorer(net, backbone, data_dir.parent / "src", frames, dataset["classes"], 4, None)
    start_score = score("val")
    net.load_state_dict(tuned)
    tuned_score = score("val")
    alpha, rows = finetune.interpolate(net, begin, tuned, [0.0, 0.5, 1.0], score, start_score[1])
    assert rows["alpha"].tolist() == [0.0, 0.5, 1.0] and rows["test_accuracy"].notna().all()
    assert (rows.loc[0, "val_log_loss"], rows.loc[0, "val_accuracy"]) == pytest.approx(start_score)
    assert (rows.loc[2, "val_log_loss"], rows.loc[2, "val_accuracy"]) == pytest.approx(tuned_score)
    kept = rows[rows["val_accuracy"] >= start_score[1] - 1e-9]
    assert alpha == kept.sort_values(["val_log_loss", "alpha"], ascending=[True, False]).iloc[0]["alpha"]
    assert all(torch.equal(v, finetune.mixed(begin, tuned, alpha)[k]) for k, v in net.state_dict().items())


def test_the_pruner_stops_trailing_candidates_and_every_trial_is_recorded(probe_setup):
    """Nine candidates (2 epochs) under Optuna's seeded grid sampler and successive-halving pruner: every trial in
    search.csv, pruned ones with fewer epochs; the same seed draws the same order and prunes the same trials."""
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(finetune=dict(lr=[1e-5, 1e-4, 1e-3], head_lr=[1e-3, 1e-2, 1e-1], patience=5, range_test_steps=0))
    tables = []
    for run in ("a", "b"):
        files = stage_io("finetune", data_dir, tmp_path / run, probe=tmp_path / "probe.npz")
        summary = run_stage("finetune", params, files)
        tables.append(pd.read_csv(files.output.search))
    search = tables[0]
    states = search.groupby("candidate")["state"].first()
    epochs = search.groupby("candidate")["epoch"].max()
    assert len(states) == 9 and summary["pruned"] == (states == "pruned").sum() > 0
    assert (epochs[states == "pruned"] < 2).all() and (epochs[states == "complete"] == 2).all()
    assert sorted(map(tuple, search.groupby("candidate")[["lr", "head_lr"]].first().to_numpy())) == sorted(
        (lr, h) for lr in (1e-5, 1e-4, 1e-3) for h in (1e-3, 1e-2, 1e-1))
    pd.testing.assert_frame_equal(tables[0].drop(columns=["train_loss", "val_loss"]),
                                  tables[1].drop(columns=["train_loss", "val_loss"]))
    params = params.updated(finetune={"prune": False})
    files = stage_io("finetune", data_dir, tmp_path / "unpruned", probe=tmp_path / "probe.npz")
    assert run_stage("finetune", params, files)["pruned"] == 0
