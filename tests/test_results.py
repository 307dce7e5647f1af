"""README's results and the learning-curve table are written from the recorded run, never typed by hand."""
import json

from conftest import ROOT

from transferlab import results, tuning


def test_readme_and_the_learning_curve_are_what_the_record_writes(monkeypatch):
    monkeypatch.chdir(ROOT)
    record = json.loads(results.RECORD.read_text())
    for path in results.DOCS:
        assert path.read_text() == results.rewrite(path, record), (
            f"{path} does not match {results.RECORD}: python -m transferlab.results readme")


def test_the_record_is_of_the_shipped_params(monkeypatch):
    """The quoted run used params.yaml as shipped: its split, C grid and fine-tune settings."""
    from transferlab.params import load

    monkeypatch.chdir(ROOT)
    record, shipped = json.loads(results.RECORD.read_text()), load("params.yaml")
    assert record["head"]["C_grid"] == shipped["head"]["C_grid"] and record["seed"] == shipped["data"]["seed"]
    searched = record["finetune"]["searched"]
    assert searched["lr"] == sorted(tuning.values(shipped["finetune"]["lr"])) and record["finetune"]["lr"] in searched["lr"]
    assert searched["head_lr"] == tuning.values(shipped["finetune"]["head_lr"])
    lowest = min(record["search"], key=lambda c: c["val_log_loss"])  # the chosen rate has the grid's lowest loss
    assert lowest["chosen"] and lowest["lr"] == record["finetune"]["lr"]
    assert len(record["search"]) == record["finetune"]["candidates"] == 3
    assert searched["weight_decay"] == tuning.values(shipped["finetune"]["weight_decay"])
    assert record["finetune"]["unfreeze"] == shipped["finetune"]["unfreeze"]
    assert record["backbone"]["backbone"] == shipped["model"]["backbone"]
    assert record["head"]["C"] in shipped["head"]["C_grid"]


def test_the_section_shows_the_numbers_of_the_record():
    record = {"dataset": {"images": 10, "dataset": "folder", "source": "imgs"}, "classes": 2,
              "split": {"train": 6, "val": 2, "test": 2}, "seed": 1,
              "backbone": {"backbone": "b", "weights": "W", "feature_dim": 8, "image_size": 32},
              "head": {"C": 0.1, "C_grid": [0.1, 1.0], "seconds": 0.5, "trainable_parameters": 18},
              "finetune": {"unfreeze": 2, "lr": 1e-5, "epochs_run": 3, "trainable_parameters": 99, "seconds": 4.0,
                           "frozen_cache_seconds": 7.0},
              "extract_seconds": 1.25, "confidence": 0.95, "verdict": "Keep the frozen features.",
              "command": "dvc repro", "machine": {"cores": 2, "cpu": "CPU", "python": "3.11", "lock_sha256": "ab"}}
    metrics = {"interval": {"accuracy": {"low": 0.5, "high": 1.0}}, "top5_accuracy": 1.0, "balanced_accuracy": 0.75,
               "macro_f1": 0.7, "log_loss": 0.4, "train_accuracy": 1.0, "val_accuracy": 0.5}
    record["probe"] = {**metrics, "accuracy": 0.75}
    record["finetuned"] = {**metrics, "accuracy": 0.5, "log_loss": 0.3}
    text = results.section(record)
    assert "| frozen features + linear head | **0.750** (0.500–1.000) |" in text
    assert "fine-tuned (LP-FT, last 2 blocks, lr 1e-05, 3 epochs)" in text and "| **0.300** |" in text
    assert "C = 0.1 of 0.1, 1" in text and "> Keep the frozen features." in text
    record["finetune"].update(lr=3e-5, candidates=3, searched={"lr": [1e-5, 3e-5, 1e-4]})
    text = results.section(record)
    assert "fine-tuned (LP-FT, last 2 blocks, lr 3e-05 chosen on validation of 1e-05, 3e-05, 0.0001, 3 epochs)" in text
    assert "+ 4 s fine-tune (3 candidates)" in text
