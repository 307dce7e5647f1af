"""The frozen-prefix cache: the network cut at a block boundary, and training from the cache equal to training on
the fly (tiny synthetic images, random-init models)."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import flip_bit, mirror_image, run_stage, stage_io
from test_finetune import net, probe_setup  # noqa: F401  (fixture)

from transferlab.core.atomic import read_splits
from transferlab.core.errors import DamagedFile, UserError
from transferlab.finetuning import frozen, network, tuning
from transferlab.finetuning.prefix import Uncachable, cut
from transferlab.models import backbones
from transferlab.pipeline import stages

# Training from cached activations vs on the fly: the same operations in a different batch composition for the
# frozen blocks, so float32 rounding differs; per-epoch losses, weights and final probabilities agree to
# |a - b| <= TOLERANCE * |b| + ABSOLUTE.
TOLERANCE, ABSOLUTE = 1e-5, 1e-7


@pytest.mark.parametrize("name, unfreeze", [("resnet18", 1), ("resnet18", 0), ("mobilenet_v2", 2), ("vgg11", 2),
                                            ("vgg11", 0), ("efficientnet_b0", 1)])
def test_prefix_then_suffix_is_the_backbone_and_shares_its_weights(name, unfreeze):
    model = net(name).eval()
    prefix, suffix, boundary = cut(model.backbone, unfreeze)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(suffix(prefix(x)), model.backbone(x))
    network.freeze(model, unfreeze)
    own = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in suffix.parameters()} <= own and {id(p) for p in prefix.parameters()} <= own
    assert not any(p.requires_grad for p in prefix.parameters())  # the prefix is exactly the frozen part
    trainable = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert trainable <= {id(p) for p in suffix.parameters()}
    assert boundary in dict(model.backbone.named_modules())


def test_no_prefix_to_cache_when_every_block_trains():
    model = net("resnet18")
    with pytest.raises(Uncachable, match="unfreeze: all trains every block"):
        cut(model.backbone, "all")
    with pytest.raises(Uncachable, match="trains all 5 blocks"):
        cut(model.backbone, 5)


def cache_into(tmp_path, data_dir, params, folder="frozen"):
    files = stage_io("frozen_cache", data_dir, tmp_path / folder)
    return stages.execute("frozen_cache", stages.runner("frozen_cache"), params, files), files.output.meta


def finetune_and_evaluate(tmp_path, data_dir, params, meta, out):
    """The finetune and evaluate_finetune stages reading the frozen_cache output `meta`; (summary, history,
    metrics, test probabilities as the predictions table holds them)."""
    probe_preds = tmp_path / "probe_predictions.csv"
    if not probe_preds.exists():
        test = pd.read_csv(data_dir / "splits" / "test.csv")
        pd.DataFrame({"id": test["path"], "correct": True}).to_csv(probe_preds, index=False)
    summary = run_stage("finetune", params, stage_io("finetune", data_dir, tmp_path / out, probe=tmp_path / "probe.npz",
                                            frozen=meta))
    metrics = run_stage("evaluate_finetune", params, stage_io("evaluate_finetune", data_dir, tmp_path / out / "eval",
                                            model=tmp_path / out / "model.pt", probe=probe_preds, frozen=meta))
    history = pd.read_csv(tmp_path / out / "history.csv")
    return summary, history, metrics, pd.read_csv(tmp_path / out / "eval" / "eval" / "finetune" / "predictions.csv")


def test_training_from_the_cache_equals_training_on_the_fly(probe_setup):  # noqa: F811
    """A search over two augmentations (none: the plain views; an explicit setting: its own views each epoch) and
    two head rates from the cache: every candidate's epochs, the chosen weights and the test scores equal the
    on-the-fly run's."""
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(features={"engine": "torch"}, finetune=dict(
        epochs=3, patience=5, head_lr=[1e-2, 3e-2], prune=False,
        augment=["none", {"scale": [0.5, 1.0], "flip": True, "rotation": 15, "jitter": 0.2}]))
    record, meta = cache_into(tmp_path, data_dir, params)
    assert record["cached"] and record["boundary"] == "layer3" and record["shape"] == [256, 2, 2]
    assert set(record["parts"]) == {"train_custom", "train_plain", "val", "test", "test_tta"}  # none: the plain views
    views = np.load(meta.parent / "train_custom.npy", mmap_mode="r")
    assert views.shape == (3, 12, 256, 2, 2) and not np.allclose(views[0], views[1])  # new views each epoch
    assert np.load(meta.parent / "test_tta.npy", mmap_mode="r").shape == (6, 6, 256, 2, 2)
    cached = finetune_and_evaluate(tmp_path, data_dir, params, meta, "cached")

    params = params.updated(finetune=dict(cache="never", num_workers=1))  # on the fly, images decoded in a worker process
    never, never_meta = cache_into(tmp_path, data_dir, params, "never")
    assert not never["cached"] and never["reason"].startswith("finetune.cache: never")
    assert sorted(p.name for p in never_meta.parent.iterdir()) == ["checksums.frozen_cache.json", "meta.json"]
    fly = finetune_and_evaluate(tmp_path, data_dir, params, never_meta, "fly")

    assert cached[0]["from_cache"] and not fly[0]["from_cache"]
    assert cached[0]["candidates"] == fly[0]["candidates"] == 4
    searches = [pd.read_csv(tmp_path / d / "search.csv") for d in ("cached", "fly")]
    assert searches[0]["epoch"].max() == 3 and set(searches[0]["augment"]) == {"none", "custom"}
    pd.testing.assert_frame_equal(searches[0][["candidate", *tuning.GRID, "epoch", "chosen"]],
                                  searches[1][["candidate", *tuning.GRID, "epoch", "chosen"]])
    columns = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "head_lr"]
    # every candidate's epochs (losses down to 1e-3: the float order of the convolutions shows below 1e-6)
    np.testing.assert_allclose(searches[0][columns], searches[1][columns], rtol=TOLERANCE, atol=1e-6)
    np.testing.assert_allclose(cached[1][columns], fly[1][columns], rtol=TOLERANCE, atol=ABSOLUTE)
    images = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        a, b = (network.load(backbones.resolved(params.model), tmp_path / d / "model.pt", 3)(images) for d in ("cached", "fly"))
    torch.testing.assert_close(a, b, rtol=TOLERANCE, atol=TOLERANCE * b.abs().max().item())
    for key in ("accuracy", "log_loss", "train_accuracy", "val_accuracy"):
        assert cached[2][key] == pytest.approx(fly[2][key], rel=TOLERANCE, abs=ABSOLUTE)
    assert cached[2]["tta"] == fly[2]["tta"]
    pd.testing.assert_frame_equal(cached[3].drop(columns="confidence"), fly[3].drop(columns="confidence"))
    np.testing.assert_allclose(cached[3]["confidence"], fly[3]["confidence"], rtol=TOLERANCE, atol=2e-6)


def test_a_depth_list_trains_from_one_cache_cut_at_the_deepest(probe_setup):  # noqa: F811
    """finetune.unfreeze: [1, 2]: one cache cut for 2 blocks (after layer2); the 1-block candidate runs layer3
    frozen, without gradient, from it, and trains as from a cache cut for 1 block (after layer3)."""
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(features={"engine": "torch"})
    params = params.updated(finetune=dict(epochs=2, patience=5, prune=False, unfreeze=[1, 2]))
    record, meta = cache_into(tmp_path, data_dir, params, "deep")
    assert record["boundary"] == "layer2" and record["key"]["unfreeze"] == 2
    listed = finetune_and_evaluate(tmp_path, data_dir, params, meta, "listed")[0]
    assert listed["candidates"] == 2 and listed["searched"]["unfreeze"] == [1, 2] and listed["from_cache"]
    params = params.updated(finetune={"unfreeze": 1})
    record, meta = cache_into(tmp_path, data_dir, params, "shallow")
    assert record["boundary"] == "layer3"
    finetune_and_evaluate(tmp_path, data_dir, params, meta, "alone")
    searches = [pd.read_csv(tmp_path / d / "search.csv") for d in ("listed", "alone")]
    one_block = searches[0][searches[0]["unfreeze"] == 1].reset_index(drop=True)
    assert len(one_block) == len(searches[1]) == 3  # epochs 0, 1, 2
    columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "head_lr"]
    np.testing.assert_allclose(one_block[columns], searches[1][columns], rtol=TOLERANCE, atol=ABSOLUTE)


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_shards_gather_to_the_unsharded_cache(probe_setup, engine):  # noqa: F811
    """features.shards: 3, each shard's frozen blocks computed alone (a Snakemake job each) then gathered: every
    part's array, every epoch's views, byte for byte the one job's. The validation split (6 images, batches of 4)
    leaves shard 0 without one. A new image at the validation list's end is in shard 2's rows: the gathering refuses
    that shard until it runs again alone, then holds the new lists' key and size and one job's arrays."""
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(features={"engine": engine})
    whole_record, whole = cache_into(tmp_path, data_dir, params, "whole")
    params = params.updated(features={"shards": 3})
    shards = [stages.execute("frozen_cache", stages.runner("frozen_cache"), params,
                             stage_io("frozen_cache", data_dir, tmp_path / "gathered", shard=s)) for s in range(3)]
    assert [r["parts"]["val"]["views"] for r in shards] == [0, 4, 2] and not (tmp_path / "gathered").exists()
    record = stages.execute("frozen_cache", stages.runner("frozen_cache"), params,
                            stage_io("frozen_cache", data_dir, tmp_path / "gathered", gathering=True))
    assert record["key"] == whole_record["key"] and record["prefix_sha256"] == whole_record["prefix_sha256"]
    key_before = record["key"]
    parts = frozen.parts(params.finetune, frozen.EVALUATION_PARTS)
    assert parts == ("train_strong", "train_plain", "val", "test", "test_tta")
    for part in parts:
        assert (tmp_path / "gathered" / f"{part}.npy").read_bytes() == (whole.parent / f"{part}.npy").read_bytes(), part
        assert record["parts"][part]["views"] == whole_record["parts"][part]["views"]
    assert frozen.Cache.open(tmp_path / "gathered", backbones.resolved(params.model), params.finetune,
                             read_splits(stage_io("frozen_cache", data_dir).input.splits), ["ant", "bee", "cat"])

    # A bit flipped in a shard's array, its time kept: the gathering checks the shard's own checksum record.
    shard_array = data_dir.parent / "results/shards/frozen_cache/1/val.npy"
    flip_bit(shard_array, -7)
    with pytest.raises(DamagedFile, match="^.*results/shards/frozen_cache/1/val.npy: damaged or edited.*make the "
                                          "shard results/shards/frozen_cache/1 again"):
        stages.execute("frozen_cache", stages.runner("frozen_cache"), params,
                       stage_io("frozen_cache", data_dir, tmp_path / "gathered", gathering=True))
    flip_bit(shard_array, -7)

    mirror_image(data_dir, "val", 0, copy_as="new.jpg")
    with pytest.raises(UserError, match="^results/shards/frozen_cache/2: computed from other images"):
        run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir, tmp_path / "gathered", gathering=True))
    run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir, tmp_path / "gathered", shard=2))
    record = run_stage("frozen_cache", params, stage_io("frozen_cache", data_dir, tmp_path / "gathered", gathering=True))
    params = params.updated(features={"shards": 1})
    whole_record, whole = cache_into(tmp_path, data_dir, params, "whole")
    assert record["key"] == whole_record["key"] != key_before and record["bytes"] == whole_record["bytes"]
    for part in parts:
        assert (tmp_path / "gathered" / f"{part}.npy").read_bytes() == (whole.parent / f"{part}.npy").read_bytes(), part


def test_cache_over_budget_runs_on_the_fly_and_says_why(probe_setup):  # noqa: F811
    tmp_path, data_dir, params, _ = probe_setup
    params = params.updated(finetune={"cache_max_gb": 1e-6})
    record, meta = cache_into(tmp_path, data_dir, params)
    assert not record["cached"] and "more than finetune.cache_max_gb: 1e-06" in record["reason"]
    summary = run_stage("finetune", params, stage_io("finetune", data_dir, tmp_path / "ft", probe=tmp_path / "probe.npz",
                                            frozen=meta))
    assert not summary["from_cache"] and summary["epochs_run"] == 2


def test_a_cache_made_for_other_params_is_refused(probe_setup):  # noqa: F811
    tmp_path, data_dir, params, _ = probe_setup
    record, meta = cache_into(tmp_path, data_dir, params)
    assert record["cached"] and record["seeds"] == [frozen.epoch_seed(0, 1), frozen.epoch_seed(0, 2)]
    params = params.updated(finetune={"epochs": 3})
    with pytest.raises(ValueError, match="made for other epochs; re-run"):
        run_stage("finetune", params, stage_io("finetune", data_dir, tmp_path / "ft", probe=tmp_path / "probe.npz",
                                      frozen=meta))
    params = params.updated(finetune={"epochs": 2})
    params = params.updated(finetune={"enabled": False})
    skipped, _ = cache_into(tmp_path, data_dir, params)
    assert json.loads(meta.read_text()) == skipped and not list(meta.parent.glob("*.npy"))


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (mounting needs root, as CI has; skipped without)."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_at_frozen_cache_is_one_line_and_leaves_no_scratch_file(probe_setup, small_disk, monkeypatch):  # noqa: F811
    """Case 6 of the bad-input issue. The free-space check counts the ONNX scratch file: arrays that fit beside
    the prefix's graph only run on the fly, saying why. Where the disk fills after the check (another writer), the
    arrays' blocks are reserved before they are memory-mapped: ENOSPC naming the folder, no Bus error, and no
    scratch or half-written file is left."""
    from transferlab.pipeline import runner

    tmp_path, data_dir, params, _ = probe_setup
    record, _ = cache_into(small_disk, data_dir, params, ".")
    assert not record["cached"] and "MiB free at" in record["reason"] and "ONNX scratch file" in record["reason"]
    roomy = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(frozen.shutil, "disk_usage", lambda folder: roomy)
    params = params.updated(features={"engine": "torch"})
    with pytest.raises(OSError) as full:
        cache_into(small_disk, data_dir, params, ".")
    line = runner.one_line(full.value)
    assert re.match(f"^{small_disk}: no space left on the device \\([0-9.]+ MiB needed\\); free some", line), line
    assert [p.name for p in small_disk.iterdir()] == ["checksums.frozen_cache.json"]  # the first run's record
