"""Bad input and faults: images read as a person sees them, params refused before work, one-line errors,
nothing silently wrong, no leftovers (the numbered cases of the bad-input issue)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, data_settings, flip_bit, make_tree, run_stage, split_into, stage_io
from PIL import Image
from test_features_head import tiny_params

from transferlab.core.atomic import atomic_path, read_arrays, scratch_file
from transferlab.core.errors import ParamsError
from transferlab.data import index, split
from transferlab.data.images import load_encoded, load_tensor
from transferlab.finetuning import finetune, network, training
from transferlab.inference.batches import ImageList
from transferlab.models import backbones
from transferlab.pipeline import stages
from transferlab.pipeline.layout import files_in
from transferlab.settings import params
from transferlab.settings.sections import Params


# 1. High bit depth is scaled, not clipped.
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_to_8_bits(tmp_path, suffix):
    ramp = np.linspace(0, 65535, 64 * 128).reshape(64, 128).astype(np.uint16)
    path = tmp_path / f"ramp{suffix}"
    Image.fromarray(ramp).save(path)
    pixels = load_tensor(path)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 128)
    expected = np.rint(ramp / 257).astype(np.int16)
    assert np.abs(pixels[0].numpy().astype(np.int16) - expected).max() <= 1
    assert (pixels == 255).float().mean() < 0.01  # clipping made 99.6 % of them 255


# 5. Multi-frame images use their first frame.
def test_animated_gif_is_its_first_frame_and_stacks_with_other_images(tmp_path):
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "b.png")
    first = load_tensor(tmp_path / "a.gif")
    assert first.shape == (3, 30, 40) and first[0].float().mean() > 150 and first[1].float().mean() < 50
    from transferlab.inference.transforms import evaluation

    plain = backbones.resolved(tiny_params().model).preprocessing
    images = ImageList(tmp_path, pd.DataFrame({"path": ["a.gif", "b.png"]}), [], evaluation(plain, normalize=False), 36)
    assert torch.stack([images[i][0] for i in range(2)]).shape == (2, 3, 32, 32)


# Photos as cameras write them: EXIF orientation applied (torchvision, PIL and the GPU path alike).
def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_tensor(tmp_path / "phone.jpg")
    assert upright.shape == (3, 60, 20) and upright[1, :8].float().mean() < 80  # red band now on top
    assert torch.equal(load_encoded(tmp_path / "phone.jpg"), upright)  # decoded here, not by nvJPEG
    image.save(tmp_path / "plain.jpg", quality=95)
    assert load_encoded(tmp_path / "plain.jpg").ndim == 1  # bytes for the GPU decoder


# 3. An empty or half-written params file is an error naming what is missing.
@pytest.mark.parametrize("text, message", [("", "is empty"), ("{}", "is empty"),
                                           ("data:\n  dataset: folder\n", "has no section model, features")])
def test_empty_or_partial_params_file_is_refused(tmp_path, text, message):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=message):
        params.load(tmp_path / "params.yaml")


# A key that means nothing for the chosen dataset is refused in one line (it was accepted silently).
@pytest.mark.parametrize("dataset", ["folder", "cats_vs_dogs"])
def test_a_pets_label_with_another_dataset_is_refused(tmp_path, dataset):
    raw = {"data": {"dataset": dataset, "source": ".", "label": "breed"}, "model": {"weights": "none"}}
    with pytest.raises(ParamsError, match=f"^params: data.label: breed only applies to data.dataset: oxford_pets; "
                                          f"{dataset} takes its classes from folder names: set data.label: null$"):
        params.validate(raw, tmp_path)
    assert params.validate({**raw, "data": {**raw["data"], "label": None}}, tmp_path).data.label is None


def test_a_stage_on_an_empty_params_file_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    result = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/split.py")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "params.yaml is empty" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("shards, argument, message", [
    (2, ["--shard", "2"], "--shard 2: features.shards is 2 (shards 0 to 1)"),
    (1, ["--gather"], "--gather: features.shards is 1 (one job, nothing to gather)")])
def test_a_shard_outside_features_shards_is_refused(tmp_path, shards, argument, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(valid_with("features.shards", shards)))
    result = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/extract.py"), *argument], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "results").exists()


def valid_with(key: str, value) -> dict:
    raw = params.defaults()
    raw["data"].update({"dataset": "folder", "source": "."})
    raw["model"]["checkpoint"] = None
    section, *rest = key.split(".")
    target = raw[section]
    for part in rest[:-1]:
        target = target[part]
    target[rest[-1]] = value
    return raw


# 8. Schema gaps: NaN/inf, reversed ranges, negative seeds.
@pytest.mark.parametrize("key, value, message", [
    ("finetune.lr", math.nan, "finetune.lr: NaN"),
    ("finetune.head_lr", math.inf, "finetune.head_lr: NaN and infinity"),
    ("data.val_fraction", "nan", "data.val_fraction: NaN"),
    ("sweep.fractions", [0.5, math.nan], "sweep.fractions: NaN"),
    ("finetune.augment", ["none", {"scale": [1.0, 0.3], "flip": False, "rotation": 0, "jitter": 0}],
     "finetune.augment.scale: [1.0, 0.3] must be"),
    ("finetune.interpolate", [0.0, 0.5], "finetune.interpolate: [0.0, 0.5] must hold 1"),
    ("data.seed", -1, "data.seed"),
    ("finetune.seed", 2 ** 40, "finetune.seed"),
    ("finetune.lr", "fast", "finetune.lr: 'fast' is not a number, a list of numbers or auto"),
    ("finetune.lr", [], "finetune.lr: [] should be non-empty"),
    ("finetune.lr", [1e-5, "1e-05"], "finetune.lr: [1e-05, 1e-05] has non-unique elements"),
    ("finetune.lr", [1e-5, 0], "finetune.lr.1: 0 is less than or equal to the minimum of 0"),
    ("finetune.weight_decay", [0.0, -1e-4], "finetune.weight_decay.1: -0.0001 is less than the minimum of 0"),
    ("finetune.head_lr", [1e-3, math.nan], "finetune.head_lr: NaN"),
    ("finetune.augment", ["none", "medium"], "finetune.augment: ['none', 'medium'] is not {scale, flip, rotation, "
                                             'jitter} or "none" | "light" | "strong" or list of'),
    ("finetune.augment", {"scale": [0.5, 1]}, "('flip' is a required property)"),
    ("finetune.unfreeze", [1, "x"], 'finetune.unfreeze: [1, \'x\'] is not integer or "all" or list of'),
])
def test_params_that_pass_every_bound_but_make_no_sense_are_refused(tmp_path, key, value, message):
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        params.validate(valid_with(key, value), tmp_path)


def test_lr_auto_needs_a_backbone_block_to_train(tmp_path):
    raw = valid_with("finetune.lr", "auto")
    raw["finetune"]["unfreeze"] = 0
    with pytest.raises(ParamsError, match="finetune.lr: auto tests the backbone's rate, but finetune.unfreeze: 0"):
        params.validate(raw, tmp_path)
    raw["finetune"].update(unfreeze=2, range_test_steps=5)
    with pytest.raises(ParamsError, match="finetune.range_test_steps: 5 is too few for finetune.lr: auto"):
        params.validate(raw, tmp_path)


def test_a_grid_written_by_dvc_exp_run_is_read_as_numbers(tmp_path):
    """`dvc exp run -S 'finetune.lr=[1e-5,3e-5,1e-4]'` writes [1e-05, 3e-05, 0.0001]: PyYAML reads 1e-05 as text."""
    import yaml

    written = yaml.safe_load("lr: [1e-05, 3e-05, 0.0001]\nhead_lr: 1e-03\n")
    assert written["lr"][0] == "1e-05"
    raw = valid_with("finetune.lr", written["lr"])
    raw["finetune"]["head_lr"] = written["head_lr"]
    checked = params.validate(raw, tmp_path).finetune
    assert checked.lr == [1e-5, 3e-5, 1e-4] and checked.head_lr == 1e-3
    assert params.validate(valid_with("finetune.lr", "auto"), tmp_path).finetune.lr == "auto"


def test_unfreeze_beyond_the_backbone_is_refused_before_training(tmp_path):
    from test_features_head import prepare

    from transferlab.core.atomic import write_json
    from transferlab.core.project import SPLITS
    from transferlab.probe import head

    data_dir = prepare(tmp_path)
    p = tiny_params()
    p = p.updated(finetune={"unfreeze": 999, "epochs": 1, "batch_size": 8, "num_workers": 0})
    run_stage("extract", p, stage_io("extract", data_dir, tmp_path / "feat"))
    cached = {s: read_arrays(tmp_path / "feat" / f"{s}.npz") for s in SPLITS}
    model, _ = head.fit(cached["train"], cached["val"], p.head)
    head.save(model, tmp_path / "head.npz", list(cached["train"]["classes"]))
    refused = r"finetune.unfreeze: 999 is more than the 5 blocks of resnet18; give 0 to 5, or all"
    with pytest.raises(ParamsError, match=refused):  # the frozen_cache stage, which runs first
        run_stage("frozen_cache", p, stage_io("frozen_cache", data_dir, tmp_path / "frozen"))
    assert not (tmp_path / "frozen" / "meta.json").exists()
    write_json(tmp_path / "frozen" / "meta.json", {"cached": False})
    with pytest.raises(ParamsError, match=refused):
        run_stage("finetune", p, stage_io("finetune", data_dir, tmp_path / "ft", probe=tmp_path / "head.npz",
                                 frozen=tmp_path / "frozen" / "meta.json"))
    assert not (tmp_path / "ft" / "model.pt").exists()


# 7. One class, or a class with no training image, is an error at split.
def test_a_single_class_dataset_is_an_error_at_split(tmp_path):
    make_tree(tmp_path / "src", {"ant": 12})
    index.build(data_settings(dataset="folder", source=str(tmp_path / "src"), label=None),
                files_in("download", tmp_path / "data"))
    with pytest.raises(split.SplitError, match=r"data.source: the dataset holds 1 class \(ant\)"):
        split_into({"split": "random", "val_fraction": 0.25, "test_fraction": 0.25, "train_fraction": 1.0,
                    "seed": 0}, tmp_path / "data")
    assert not (tmp_path / "data" / "splits").exists()


# 6. Class names are text: no mathtext in the figures, no HTML in the page.
def test_a_class_named_like_a_formula_is_drawn_as_text(tmp_path):
    from test_report import page as report_page
    from test_report import pipeline

    p, data_dir, results = pipeline(tmp_path, False, classes=("ant", r"cost $\frac$", "cat"))
    page = report_page(p, data_dir).read_text()
    assert r"cost $\frac$" in page and (results / "report" / "confusion.png").stat().st_size > 1000


# 10. Links leaving the dataset are never read.
def test_symlinks_leaving_the_dataset_are_left_out_with_the_reason(tmp_path):
    src = make_tree(tmp_path / "src", {"ant": 3, "bee": 3})
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (20, 20)).save(secret)
    (src / "ant" / "escape.jpg").symlink_to(secret)
    (src / "bee" / "inside.jpg").symlink_to(src / "bee" / "bee_0.jpg")
    index.build(data_settings(dataset="folder", source=str(src), label=None), files_in("download", tmp_path / "data"))
    indexed = pd.read_csv(tmp_path / "data" / "index.csv")["path"].tolist()
    rejected = pd.read_csv(tmp_path / "data" / "rejected.csv")
    assert "ant/escape.jpg" not in indexed and "bee/inside.jpg" in indexed
    assert rejected.set_index("path").loc["ant/escape.jpg", "reason"] == "a link leaving the dataset folder"


# 7. Link loops, cycles and folder links go to rejected.csv with their reason; nothing behind them is read or hashed.
def test_link_loops_cycles_and_folder_links_are_rejected_and_never_hashed(tmp_path):
    from types import SimpleNamespace

    from transferlab.pipeline import sources

    src = make_tree(tmp_path / "src", {"ant": 3, "bee": 3})
    outside = make_tree(tmp_path / "outside", {"wasp": 2})
    (src / "ant" / "loop.jpg").symlink_to("loop.jpg")
    (src / "ant" / "up").symlink_to("..")
    (src / "bee" / "more").symlink_to(outside / "wasp")
    (src / "bee" / "again").symlink_to(src / "ant")
    (src / "bee" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    index.build(data_settings(dataset="folder", source=str(src), label=None), files_in("download", tmp_path / "data"))
    reasons = pd.read_csv(tmp_path / "data" / "rejected.csv").set_index("path")["reason"].to_dict()
    assert reasons == {"ant/loop.jpg": "a link loop", "ant/up": "a link cycle (leads back to .)",
                       "bee/again": "a link to another folder of the dataset (its files are read there, once)",
                       "bee/gone.jpg": "a broken link (its target is missing)",
                       "bee/more": "a link leaving the dataset folder"}
    assert len(pd.read_csv(tmp_path / "data" / "index.csv")) == 6
    out = SimpleNamespace(**{name: tmp_path / "inputs" / f"{name}.json" for name in
                             ("dataset", "checkpoint", "sweep_checkpoints")})
    defaults = Params.from_mapping(params.defaults())
    sources.refresh(defaults.updated(data={"source": str(src)}, model={"checkpoint": None}), out)
    hashed = json.loads(out.dataset.read_text())["files"]
    assert sorted(hashed) == [f"{c}/{c}_{i}.jpg" for c in ("ant", "bee") for i in range(3)]


# 11. What a killed stage left is removed by the next run.
def test_leftovers_of_a_killed_write_are_removed_by_the_next(tmp_path):
    for name in (".train.npz.abc123.part.npz", ".scratch-train-xyz.npy", ".scratch-backbone-q.onnx"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / ".val.npz.def.part.npz").write_bytes(b"another output's, still being written")
    with atomic_path(tmp_path / "train.npz") as tmp:
        tmp.write_bytes(b"done")
    with scratch_file(tmp_path, ".npy", "train"), scratch_file(tmp_path, ".onnx", "backbone"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".val.npz.def.part.npz", "train.npz"]


# 16. Fine-tune precision follows what the GPU supports.
@pytest.mark.parametrize("kind, bf16, expected", [("cpu", False, "float32"), ("cuda", True, "bfloat16"),
                                                  ("cuda", False, "float16")])
def test_finetune_precision_is_what_the_device_supports(monkeypatch, kind, bf16, expected):
    monkeypatch.setattr(finetune.backends, "bf16_supported", lambda dev: bf16)
    assert training.precision(torch.device(kind)) == expected


def test_float16_training_scales_its_loss(monkeypatch):
    """The scaler path runs (on the CPU, enabled by hand): losses finite and the weights move."""
    net = torch.nn.Linear(4, 2)
    before = net.weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = [(torch.randn(8, 4, 1, 1), torch.randint(0, 2, (8,)), None)]
    model = network.FineTuneNet(torch.nn.Flatten(), net)
    loss, _ = training.run_epoch(model, data, torch.device("cpu"), optimizer, scheduler, scaler=scaler)
    assert math.isfinite(loss) and not torch.equal(before, net.weight) and scaler.get_scale() == 1024.0


# 4. Damaged caches, checkpoints and images: one line naming the file and the stage that writes it, exit 2.
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny project laid out as the stages write it, with its params.yaml and every stage's checksum record."""
    import yaml
    from test_report import pipeline

    from transferlab.pipeline import checks, stages

    root = tmp_path_factory.mktemp("trained")
    p, _, _ = pipeline(root, True, classes=("ant", "bee", "cat"))
    for name in ("download", "split", "extract", "train_head"):  # written by library calls in `pipeline`
        checks.record(stages.io(name, root))
    (root / "params.yaml").write_text(yaml.safe_dump(p.as_mapping(), sort_keys=False))
    return root


def stage(project: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "workflow/scripts" / script), *args], cwd=project,
                          capture_output=True, text=True)


@pytest.fixture
def in_process(monkeypatch, capsys):
    """Run a stage script as `python workflow/scripts/<script>` would, in this process (torch is loaded already:
    a second each instead of five), returning its exit status and stderr as a CompletedProcess. The exit path of
    a real process is tested with subprocesses elsewhere in this file."""
    import runpy

    def run(project: Path, script: str) -> subprocess.CompletedProcess:
        monkeypatch.chdir(project)
        monkeypatch.setattr(sys, "argv", [script])
        capsys.readouterr()
        try:
            runpy.run_path(str(ROOT / "workflow/scripts" / script), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        return subprocess.CompletedProcess(script, code, "", capsys.readouterr().err)

    return run


def one_error_line(result: subprocess.CompletedProcess, script: str) -> str:
    """The stage's one error line; the run failed with exit 2, no traceback, nothing else said to be an error."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"transferlab {script[:-3]}: error: "), result.stderr[-2000:]
    return errors[0]


class Payload:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse it."""


def flip_a_bit(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:]


@pytest.mark.parametrize("target, damage, script, expected", [
    ("results/head/model.npz", lambda b: b[: len(b) // 2], "evaluate_probe.py",
     "were written (truncated or replaced); re-run the train_head stage"),
    ("results/features/test.npz", lambda b: b"", "evaluate_probe.py", "re-run the extract stage"),
    ("results/finetune/model.pt", lambda b: b[:100], "evaluate_finetune.py", "re-run the finetune stage"),
    ("results/finetune/model.pt", flip_a_bit, "evaluate_finetune.py",
     "damaged or edited: its sha256 is not the one recorded when it was written; re-run the finetune stage"),
    ("results/finetune/model.pt", "object", "evaluate_finetune.py", "re-run the finetune stage"),
    ("results/frozen/train_strong.npy", flip_a_bit, "finetune.py", "re-run the frozen_cache stage"),
    ("results/frozen/test.npy", lambda b: b[:1000], "evaluate_finetune.py", "re-run the frozen_cache stage"),
    ("data/dataset.json", lambda b: b[:40], "evaluate_finetune.py", "re-run the download stage"),
    ("data/dataset.json", lambda b: b'{"classes": 3}', "split.py", "re-run the download stage"),
    ("data/index.csv", lambda b: b[: len(b) // 3], "split.py", "re-run the download stage"),
])
def test_damaged_files_are_one_line_naming_the_file_and_its_stage(trained, in_process, target, damage, script,
                                                                  expected):
    path = trained / target
    original = path.read_bytes()
    try:
        if damage == "object":
            torch.save({"weight": Payload()}, path)
        else:
            path.write_bytes(damage(original))
        result = in_process(trained, script)
    finally:
        path.write_bytes(original)
    line = one_error_line(result, script)
    assert f"{target}: " in line and expected in line


# 1, 9. Every gather checks its shards against the checksums each shard recorded when it wrote: an edited array or
# a flipped bit (its time kept) is one line naming the file and the shard's job, never gathered into the outputs.
@pytest.mark.parametrize("damage", ["edited", "bit flipped"])
def test_a_damaged_shard_is_refused_by_its_gather(tmp_path, damage):
    from test_features_head import prepare

    from transferlab.core.atomic import write_arrays
    from transferlab.core.errors import DamagedFile
    from transferlab.pipeline import stages
    from transferlab.pipeline.runner import one_line

    data_dir = prepare(tmp_path)
    sharded = tiny_params(train_views=1, shards=2)
    for shard in range(2):
        stages.execute("extract", stages.runner("extract"), sharded, stage_io("extract", data_dir, shard=shard))
    target = data_dir.parent / "results/shards/extract/1/train.npz"
    if damage == "edited":
        arrays = read_arrays(target)
        write_arrays(target, {**arrays, "features": arrays["features"] * 1.5})
    else:
        flip_bit(target, 200)
    with pytest.raises(DamagedFile) as caught:
        stages.execute("extract", stages.runner("extract"), sharded, stage_io("extract", data_dir, gathering=True))
    assert str(caught.value).startswith(f"{target}: damaged or edited")
    assert one_line(caught.value, "snakemake").endswith("make the shard results/shards/extract/1 again: snakemake "
                                                        "--cores all -R results/shards/extract/1")
    assert not (data_dir.parent / "results/features/train.npz").exists()


def test_a_bit_flipped_array_archive_is_one_line(tmp_path):
    from transferlab.core.atomic import write_arrays
    from transferlab.core.errors import DamagedFile

    path = tmp_path / "train.npz"
    write_arrays(path, {"features": np.arange(4000, dtype=np.float32)})
    flip_bit(path, 300)
    with pytest.raises(DamagedFile, match=f"^{path}: not a readable array archive .*CRC"):
        read_arrays(path)


# 11. A damaged file's line gives the command that makes it again in the engine running the stage.
@pytest.mark.parametrize("environment, command", [
    ({}, "re-run the train_head stage that writes it: snakemake --cores all -R train_head (or dvc repro -f -s "
         "train_head && dvc repro)"),
    ({"DVC_STAGE": "evaluate_probe"}, "re-run the train_head stage that writes it: dvc repro -f -s train_head && "
                                      "dvc repro"),
    ({"TRANSFERLAB_PARAMS": "planned"}, "re-run the train_head stage that writes it: snakemake --cores all -R "
                                        "train_head"),
])
def test_a_damaged_file_names_the_re_run_command_of_the_engine(trained, in_process, monkeypatch, environment,
                                                                command):
    import json

    for name, value in environment.items():
        monkeypatch.setenv(name, json.dumps(params.load(trained / "params.yaml").as_mapping()) if value == "planned" else value)
    path = trained / "results/head/model.npz"
    original = path.read_bytes()
    try:
        path.write_bytes(flip_a_bit(original))
        line = one_error_line(in_process(trained, "evaluate_probe.py"), "evaluate_probe.py")
    finally:
        path.write_bytes(original)
    assert line.endswith(command), line


def test_a_checkpoint_file_is_checked_at_extract(trained, in_process, tmp_path):
    """Damaged, not finite, or of another architecture: one line naming model.checkpoint, before any image."""
    import yaml
    from torchvision import models

    good = models.get_model("resnet18", weights=None).state_dict()
    cases = {"damaged.pth": None, "flipped.pth": None,
             "nan.pth": {k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in good.items()},
             "other.pth": models.get_model("mobilenet_v3_small", weights=None).state_dict()}
    settings = trained / "params.yaml"
    original = settings.read_text()
    lines = {}
    try:
        for name, state in cases.items():
            path = tmp_path / name
            if name == "damaged.pth":
                torch.save(good, path)
                path.write_bytes(b"\x96" * 64 + path.read_bytes()[64:])  # the zip header and pickle start overwritten
            elif name == "flipped.pth":  # one bit inside a tensor's data: unpickling alone loads other weights
                torch.save(good, path)
                path.write_bytes(flip_a_bit(path.read_bytes()))
            else:
                torch.save(state, path)
            p = yaml.safe_load(original)
            p["model"]["checkpoint"] = str(path)
            settings.write_text(yaml.safe_dump(p))
            lines[name] = one_error_line(in_process(trained, "extract.py"), "extract.py")
    finally:
        settings.write_text(original)
    assert "model.checkpoint: " in lines["damaged.pth"] and "fails the CRC-32 check" in lines["damaged.pth"]
    assert re.search(r"model.checkpoint: \S+flipped.pth: damaged: its member \S+/data/\d+ fails the CRC-32 check",
                     lines["flipped.pth"]), lines["flipped.pth"]
    assert "tensors hold NaN or infinity" in lines["nan.pth"]
    assert "does not fit ResNet" in lines["other.pth"] and "weights missing" in lines["other.pth"]


def test_visualize_checks_the_images_of_one_class_of_the_test_split(trained, in_process):
    """The adversarial photos are a filtered part of the test list: each is checked against its own digest."""
    import yaml

    settings = trained / "params.yaml"
    original = settings.read_text()
    p = yaml.safe_load(original)
    last = pd.read_csv(trained / "data/splits/test.csv")["label"].iloc[-1]
    p["visualize"].update(adversarial_from=last, adversarial_to=None)
    settings.write_text(yaml.safe_dump(p))
    try:
        result = in_process(trained, "visualize.py")
    finally:
        settings.write_text(original)
    assert result.returncode == 0, result.stderr[-2000:]


def test_an_image_changed_after_indexing_is_named(trained, in_process):
    """Replaced by garbage, or by another valid photo: the index's sha256 no longer matches, before it is used."""
    import json

    frame = pd.read_csv(trained / "data/splits/test.csv")
    root = Path(json.loads((trained / "data/dataset.json").read_text())["root"])
    victim, other = root / frame["path"][0], root / frame["path"][1]
    original = victim.read_bytes()
    lines = []
    try:
        for replacement in (b"this is no longer a photo" * 10, other.read_bytes()):
            victim.write_bytes(replacement)
            lines.append(one_error_line(in_process(trained, "extract.py"), "extract.py"))
    finally:
        victim.write_bytes(original)
    for line in lines:
        assert f"{victim}: changed since the download stage indexed it" in line and "re-run the download stage" in line


def test_only_user_errors_are_one_line_and_bugs_keep_their_traceback():
    import errno

    from transferlab.core.errors import UserError
    from transferlab.pipeline.runner import one_line

    assert one_line(AttributeError("'NoneType' object has no attribute 'shape'")) is None
    assert one_line(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert one_line(ValueError("a library's own ValueError")) is None
    assert one_line(UserError("data.source: no images")) == "data.source: no images"
    assert one_line(UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                              "call last):\n  File x\ntransferlab.core.errors.UserError: a.jpg: changed")) == "a.jpg: changed"
    full = one_line(OSError(errno.ENOSPC, "No space left on device", "results/frozen/train.npy"))
    assert full.startswith("results/frozen/train.npy: no space left on the device")


def test_a_full_disk_is_one_line_and_leaves_no_output(trained, tmp_path):
    """The stage runner reports ENOSPC as one line; the atomic write leaves no file that looks complete."""
    code = ("import errno, sys\n"
            "from transferlab.core import atomic\n"
            "from transferlab.pipeline import runner, stages\n"
            "def run(params, io):\n"
            "    with atomic.atomic_path(io.output.summary) as tmp:\n"
            "        tmp.write_text('half')\n"
            "        raise OSError(errno.ENOSPC, 'No space left on device', str(tmp))\n"
            "stages.runner = lambda stage: run\n"
            "sys.argv = ['train_head.py']\n"
            "runner.run_stage('train_head')\n")
    summary = trained / "results/head/summary.json"
    before = summary.read_bytes()
    result = subprocess.run([sys.executable, "-c", code], cwd=trained, capture_output=True, text=True)
    line = one_error_line(result, "train_head.py")
    assert "no space left on the device" in line and summary.read_bytes() == before


def test_predict_names_a_damaged_exported_model(trained, tmp_path, capsys):
    """A truncated model.onnx or a labels.json of the wrong length: one line naming the file, exit 2."""
    import json
    import shutil

    from transferlab.pipeline import stages

    model_dir = tmp_path / "model"
    p = params.load(trained / "params.yaml")
    files = stages.io("export", trained, model_dir, template=ROOT / "workflow/report/model_card.md.j2")
    stages.execute("export", stages.runner("export"), p, files)
    from transferlab.serve.cli import main

    photo = next((trained / "src").rglob("*.jpg"))
    command = ["predict", "--model-dir", str(model_dir), str(photo)]
    assert main(command) == 0
    lines = {}
    for name, damage in (("model.onnx", lambda b: b[: len(b) // 2]),
                         ("labels.json", lambda b: json.dumps(json.loads(b)[:-1]).encode())):
        path = model_dir / name
        original = path.read_bytes()
        path.write_bytes(damage(original))
        for record in (True, False):  # with the folder's checksum record, and a folder copied without it
            copy = tmp_path / f"copy-{name}-{record}"
            shutil.copytree(model_dir, copy)
            if not record:
                (copy / "checksums.export.json").unlink()
            command[2] = str(copy)
            capsys.readouterr()
            assert main(command) == 2
            lines[name, record] = capsys.readouterr().err.strip().splitlines()[-1]
        path.write_bytes(original)
    for (name, _), line in lines.items():
        assert f"{name}: " in line, line
    assert "not a readable ONNX graph" in lines["model.onnx", False]
    assert "labels for a graph of 3 outputs" in lines["labels.json", False]


def test_class_names_are_escaped_in_the_model_card(tmp_path):
    from transferlab.serve.export import model_card

    template = tmp_path / "card.md.j2"
    template.write_text("{{ dataset.classes | join(', ') }} from {{ dataset.source }}\n")
    card = model_card(template, {"method": "probe"}, {"probe": {}}, {"classes": ["<script>x</script>", "cat"],
                                                                    "source": "a&b"},
                      {"train": {"per_class": {}}}, {}, {})
    assert "<script>" not in card and "&lt;script&gt;" in card and "a&amp;b" in card


# 17. A failing stage's one line reaches Snakemake's console, and its outputs are not left behind.
def test_snakemake_shows_the_failing_stage_line_on_the_console(tmp_path):
    import shutil

    from conftest import copy_project, run

    project = copy_project(tmp_path)
    shutil.rmtree(tmp_path / "images")
    make_tree(tmp_path / "images", {"ant": 12})
    result = run(["snakemake", "--cores", "1"], project, check=False)
    assert result.returncode != 0
    assert "transferlab split: error: data.source: the dataset holds 1 class (ant)" in result.stdout + result.stderr
    assert not (project / "data" / "splits" / "train.csv").exists()


# 2. Each archive's content gets its own folder: switching or replacing a source never mixes datasets.
def test_switching_or_replacing_an_archive_never_mixes_datasets(tmp_path):
    import zipfile

    def archive(path: Path, classes: dict[str, int]) -> str:
        tree = make_tree(tmp_path / f"tree-{path.stem}-{len(classes)}", classes)
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(tree.rglob("*.jpg")):
                zf.write(f, f.relative_to(tree).as_posix())
        return str(path)

    def classes_indexed(source: str) -> list[str]:
        found = index.build(data_settings(dataset="folder", source=source, label=None), files_in("download", tmp_path / "data"))
        return found["classes"]

    assert classes_indexed(archive(tmp_path / "one.zip", {"ant": 3, "bee": 3})) == ["ant", "bee"]
    assert classes_indexed(archive(tmp_path / "two.zip", {"cat": 3, "dog": 3})) == ["cat", "dog"]
    assert classes_indexed(archive(tmp_path / "one.zip", {"eel": 3, "fox": 3, "gnu": 3})) == ["eel", "fox", "gnu"]


# 15. Snakemake's command-line config would plan other jobs than the scripts compute: refused.
def test_snakemake_command_line_config_is_refused_with_one_message(tmp_path):
    from conftest import copy_project, run

    project = copy_project(tmp_path)
    refused = run(["snakemake", "-n", "--config", "sweep={'fractions': [0.3]}"], project, check=False)
    assert refused.returncode != 0
    assert "sweep.fractions: set on the command line" in refused.stdout + refused.stderr
    assert "edit params.yaml instead" in refused.stdout + refused.stderr
    assert run(["snakemake", "-n"], project).returncode == 0


# 8. train_views bounded by what fits, with the estimate in the message, before any work.
def test_train_views_that_cannot_fit_are_refused_with_the_estimate(tmp_path, monkeypatch):
    import shutil

    from test_features_head import prepare

    from transferlab.probe import features

    data_dir = prepare(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(features.shutil, "disk_usage", lambda folder: usage._replace(free=10 * 2**20))
    p = tiny_params(train_views=1000)
    with pytest.raises(ParamsError, match=r"features.train_views: 1000 extra views make 12,012 training rows × 512 "
                                          r"features = 23.5 MiB; that needs 46.9 MiB of free disk at .*, and there "
                                          r"is 10.0 MiB"):
        run_stage("extract", p, stage_io("extract", data_dir, tmp_path / "feat"))
    assert not (tmp_path / "feat" / "train.npz").exists()
    features.check_room(12, 512, tmp_path, 0)  # a few rows fit


# 17. Params naming classes are checked right after download, before any training.
def test_visualize_classes_are_checked_at_split_before_any_training(tmp_path):
    from conftest import write_params

    make_tree(tmp_path / "images", {"ant": 8, "bee": 8, "cat": 8})
    write_params(tmp_path / "params.yaml", data={"dataset": "folder", "source": "images"},
                 model={"backbone": "resnet18", "weights": "none", "checkpoint": None},
                 visualize={"enabled": True, "target_class": "Bengal"})
    assert stage(tmp_path, "download.py").returncode == 0
    result = stage(tmp_path, "split.py")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "visualize.target_class: 'Bengal' is not a class of this dataset (ant, bee, cat)" in result.stderr
    assert not (tmp_path / "data" / "splits").exists()


def test_without_the_finetune_the_visualized_classes_are_imagenet_ones(tmp_path):
    """Checked at the inputs stage, before any work (the split checks only the dataset's classes)."""
    p = Params.from_mapping(params.defaults()).updated(
        model={"backbone": "resnet18", "weights": "none"}, finetune={"enabled": False},
        visualize={"enabled": True, "target_class": "tabby", "adversarial_from": "ant"})
    split.check_class_names(p, ["ant", "bee"])
    backbones.check_visualized_classes(p)
    p = p.updated(visualize={"adversarial_to": "Bengal"})  # a pet breed, not an ImageNet class
    split.check_class_names(p, ["ant", "bee"])
    with pytest.raises(ParamsError, match="visualize.adversarial_to: 'Bengal' is not a class of the ImageNet"):
        stages.runner("inputs")(p, stages.io("inputs", tmp_path))
    assert not (tmp_path / "data").exists()


@pytest.mark.engine
def test_snakemake_checks_the_imagenet_classes_visualize_names_when_it_reads_the_snakefile(tmp_path):
    from conftest import copy_project, run, set_param

    project = copy_project(tmp_path)
    set_param(project, "finetune", "enabled", False)
    set_param(project, "visualize", "target_class", "Bengal")
    result = run(["snakemake", "-n"], project, check=False)
    assert result.returncode != 0 and "visualize.target_class: 'Bengal' is not a class of the ImageNet classifier" \
        in result.stdout + result.stderr
    set_param(project, "visualize", "target_class", "tabby")
    assert run(["snakemake", "-n"], project).returncode == 0


def test_every_param_naming_a_class_is_checked_in_one_message():
    p = Params.from_mapping(params.defaults()).updated(visualize={
        "enabled": True, "target_class": "Bengal", "adversarial_from": "beagle", "adversarial_to": "Persian"})
    with pytest.raises(ParamsError) as refused:
        split.check_class_names(p, ["cats", "dogs"])
    message = str(refused.value)
    for key, name in (("target_class", "Bengal"), ("adversarial_from", "beagle"), ("adversarial_to", "Persian")):
        assert f"visualize.{key}: '{name}' is not a class of this dataset (cats, dogs)" in message
    assert message.count("\n") == 0 and message.endswith("name one, or null")


# Keys given twice, fractions no engine can match, an empty file under Snakemake: our one line, before any work.
def test_a_key_given_twice_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace(
        "  head_lr: 0.001", "  head_lr: 0.001\n  head_lr: 0.01"))
    with pytest.raises(ParamsError, match=r"params: head_lr: given twice \(line \d+\); keep one"):
        params.load(tmp_path / "params.yaml")


def test_sweep_fractions_the_engines_cannot_spell_are_refused():
    p = params.defaults()
    p["sweep"]["fractions"] = [0.00001, 1.0]
    with pytest.raises(ParamsError, match=r"sweep.fractions.0: 1e-05 is less than the minimum of 0.0001"):
        params.validate(p)
    from transferlab.pipeline.layout import label

    assert label(0.0001) == "0.0001" and label(0.0001).replace(".", "", 1).isdigit()


def test_an_empty_params_file_under_snakemake_is_our_one_line(tmp_path):
    from conftest import copy_project, run

    project = copy_project(tmp_path)
    (project / "params.yaml").write_text("")
    result = run(["snakemake", "-n"], project, check=False)
    assert result.returncode != 0
    assert "params: params.yaml is empty; it needs the sections data, model" in result.stdout + result.stderr
    assert "Config file must be given" not in result.stdout + result.stderr
