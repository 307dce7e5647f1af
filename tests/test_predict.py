"""Using the trained model: `transferlab predict`, the export stage's ONNX graph and model card, TTA."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, is_share, resolved_backbone, run
from PIL import Image

from transferlab.inference import transforms
from transferlab.serve import export, predict


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`transferlab predict ARGS` run in this process from `cwd`: `transferlab.serve.cli.main`, what the console
    command calls (the command itself runs in test_the_install_puts_the_transferlab_command_beside_python)."""
    from transferlab.serve.cli import main

    out, err, here = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["predict", *args])
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture
def project(trained_project) -> Path:
    return trained_project


def test_predictions_on_the_test_split_equal_the_evaluate_stage(project):
    for method in ("probe", "finetune"):
        result = cli("--project", ".", "--model", method, "--out", f"{method}.csv",
                     *pd.read_csv(project / "data/splits/test.csv")["path"].map(lambda p: f"../images/{p}"), cwd=project)
        assert result.returncode == 0, result.stderr
        ours = pd.read_csv(project / f"{method}.csv")
        theirs = pd.read_csv(project / f"results/eval/{method}/predictions.csv")
        assert ours["label"].tolist() == theirs["predicted"].tolist()
        # the evaluate stage scores the fine-tune from the frozen-prefix cache, which ONNX Runtime computed
        # (features.engine: auto; checked against torch to 1e-4 relative): equal to float32 rounding
        np.testing.assert_allclose(ours["probability"], theirs["confidence"], atol=1e-5)


def test_exported_folder_gives_the_project_top1_on_every_image(project, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(project / "results/model", model_dir)  # the folder alone, away from the project
    method = json.loads((model_dir / "summary.json").read_text())["method"]
    images = str(project.parent / "images")
    a = cli("--model-dir", str(model_dir), "--top-k", "2", "--out", str(tmp_path / "a.csv"), images, cwd=tmp_path)
    b = cli("--project", str(project), "--model", method, "--top-k", "2", "--out", str(tmp_path / "b.csv"), images,
            cwd=tmp_path)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert len(a) == 24 and list(a.columns) == ["path", "label", "probability", "label_2", "probability_2"]
    assert a["path"].tolist() == b["path"].tolist() and a["label"].tolist() == b["label"].tolist()
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-4)
    assert (a["probability"] >= a["probability_2"]).all()


def test_export_writes_a_checked_graph_and_a_card_from_the_run(project):
    folder = project / "results/model"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["check"]["top1_differences"] == 0 and summary["check"]["max_probability_difference"] <= 1e-4
    assert summary["check"]["images"] == len(pd.read_csv(project / "data/splits/test.csv"))
    assert json.loads((folder / "labels.json").read_text()) == ["ant", "bee", "cat"]
    record = json.loads((folder / "preprocessing.json").read_text())
    assert (record["resize_size"], record["crop_size"]) == (37, 32)  # resnet18's 256/224 ratio at 32 px
    card = (folder / "model_card.md").read_text()
    metrics = {m: json.loads((project / f"results/metrics/{m}.json").read_text()) for m in ("probe", "finetune")}
    assert f"{100 * metrics['probe']['accuracy']:.1f}%" in card and f"{100 * metrics['finetune']['accuracy']:.1f}%" in card
    assert summary["why"] in card and "Limitations" in card and "(exported)" in card


def test_export_check_refuses_a_graph_that_disagrees(project):
    files = predict.project_files(project)
    model = predict.extracted(files)
    plain = model.backbone.preprocessing
    module = export.probabilities_module(predict.network(files, "probe", model), plain)
    frame = pd.read_csv(project / "data/splits/test.csv")
    from transferlab.inference.batches import ImageList
    images = ImageList(project.parent / "images", frame, model.classes, transforms.evaluation(plain, normalize=False),
                       plain.resize)
    reference = lambda x: module(x).detach().numpy()  # noqa: E731
    assert export.check(module, reference, images, 3, 4)["top1_differences"] == 0
    with pytest.raises(ValueError, match="disagrees with torch"):
        export.check(module, lambda x: reference(x)[:, ::-1].copy(), images, 3, 4)


def write_metrics(project: Path, probe: float, finetune: float | None, finetune_test: float = 0.5) -> None:
    (project / "results/metrics").mkdir(parents=True, exist_ok=True)
    (project / "results/metrics/probe.json").write_text(json.dumps({"val_accuracy": probe, "accuracy": 0.99}))
    tuned = {"skipped": True} if finetune is None else {"val_accuracy": finetune, "accuracy": finetune_test}
    (project / "results/metrics/finetune.json").write_text(json.dumps(tuned))


@pytest.mark.parametrize("probe, tuned, chosen", [(0.80, 0.85, "finetune"), (0.85, 0.85, "probe"),
                                                  (0.90, 0.85, "probe"), (0.80, None, "probe")])
def test_best_is_chosen_by_validation_accuracy_never_test(tmp_path, probe, tuned, chosen):
    write_metrics(tmp_path, probe, tuned)  # the probe always has the better test accuracy here
    method, why = predict.choose(predict.project_files(tmp_path))
    assert method == chosen and ("validation" in why or "did not run" in why)


def test_a_disabled_finetune_is_not_chosen_from_its_earlier_outputs(tmp_path):
    write_metrics(tmp_path, 0.5, 0.9)
    (tmp_path / "params.yaml").write_text("finetune:\n  enabled: false\n")
    assert predict.choose(predict.project_files(tmp_path))[0] == "probe"


def test_unreadable_files_are_skipped_with_their_reason(project, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(project.parent / "images/bee", folder / "bee")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes((folder / "bee/bee_0.jpg").read_bytes()[:300])
    result = cli("--project", str(project), "--out", str(tmp_path / "p.csv"), str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(tmp_path / "p.csv")
    assert len(rows) == 8 and rows["path"].str.contains("/bee/").all()
    for name, reason in (("notes.txt", "not an image"), ("empty.jpg", "empty file"), ("cut.jpg", "truncated")):
        assert f"skipped {folder / name}: {reason}" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--model-dir", "results/model", "--model", "probe", "../images"], "--model and --model-dir"),
    (["--top-k", "4", "../images"], "--top-k: 4"),
    (["no/such/folder"], "no/such/folder: no such file or folder"),
    (["--model-dir", "../images", "../images"], "not an exported model folder"),
    (["data/index.csv"], "no readable image among the 1 files"),
])
def test_bad_arguments_are_one_line_and_exit_2(project, args, message, monkeypatch, capsys):
    """In this process (`transferlab.serve.cli.main`, what the console command calls; the command itself runs in
    the tests above)."""
    from transferlab.serve.cli import main

    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main(["predict", *args]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len([line for line in stderr.splitlines() if "error" in line]) == 1


def test_a_project_without_a_trained_model_says_which_stage_to_run(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.jpg")
    result = cli("a.jpg", cwd=tmp_path)
    assert result.returncode == 2 and "run the pipeline first" in result.stderr


def test_the_install_puts_the_transferlab_command_beside_python(tmp_path):
    command = Path(sys.executable).parent / "transferlab"
    assert command.exists(), "pip install -e . installs the console script (pyproject [project.scripts])"
    result = run([str(command), "predict", "--help"], tmp_path)
    assert "--model-dir" in result.stdout and "--tta" in result.stdout


def test_tta_views_are_the_centre_its_mirror_and_the_corners():
    plain = resolved_backbone("resnet18", image_size=32).preprocessing
    image = torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8)
    views = transforms.test_time_views(plain)(image)
    assert views.shape == (len(transforms.TTA_VIEWS), 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views[0], transforms.evaluation(plain, normalize=False)(image))
    assert torch.equal(views[1], views[0].flip(-1))
    resized = transforms.v2.Resize(37, antialias=True)(image)  # shorter side 37: 46 x 37
    assert torch.equal(views[2], resized[:, :32, :32]) and torch.equal(views[5], resized[:, -32:, -32:])


def test_tta_averages_probabilities_over_views_in_smaller_batches():
    plain = resolved_backbone("resnet18", image_size=32).preprocessing
    forward = lambda x: np.stack([x.float().mean((1, 2, 3)).numpy(), np.zeros(len(x))], 1)  # noqa: E731
    transform, averaged, batch = transforms.for_prediction(plain, forward, 32, tta=True)
    views = torch.stack([transform(torch.full((3, 40, 40), v, dtype=torch.uint8)) for v in (10, 200)])
    np.testing.assert_allclose(averaged(views), [[10, 0], [200, 0]])
    assert batch == 32 // len(transforms.TTA_VIEWS)


def test_evaluate_reports_tta_for_the_finetuned_network(project):
    tuned = json.loads((project / "results/metrics/finetune.json").read_text())
    assert tuned["tta"]["views"] == 6 and is_share(tuned["tta"]["accuracy"], tuned["test_images"])
    assert tuned["tta"]["interval"]["accuracy"]["low"] <= tuned["tta"]["accuracy"]
    assert "tta" not in json.loads((project / "results/metrics/probe.json").read_text())


def test_dvc_yaml_declares_the_exported_model_as_an_artifact():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    artifact = pipeline["artifacts"]["classifier"]
    assert artifact["type"] == "model" and artifact["path"] == "results/model" and artifact["desc"]
    assert "results/model" in pipeline["stages"]["export"]["outs"]

