"""README's results, the learning-curve table and the benchmark tables are written from records, never typed by hand."""
import json

import pytest
from conftest import ROOT

from transferlab.finetuning import tuning
from transferlab.pipeline import results


def test_readme_and_the_learning_curve_are_what_the_record_writes(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in dict.fromkeys(document for document, *_ in results.SECTIONS):
        assert path.read_text() == results.generated(path), (
            f"{path} does not match its records: python -m transferlab.pipeline.results readme")


@pytest.mark.parametrize("path", [results.RECORD, results.FAR_RECORD])
def test_the_records_are_of_the_shipped_params(monkeypatch, path):
    """Both quoted runs used params.yaml as shipped (the far one on another folder, sweep and visualize off): its
    split, C grid and the fine-tune's whole search; the chosen candidate has the search's lowest loss."""
    from transferlab.settings.params import load

    monkeypatch.chdir(ROOT)
    record, shipped = json.loads(path.read_text()), load("params.yaml")
    assert record["head"]["C_grid"] == shipped.head.C_grid and record["seed"] == shipped.data.seed
    grid = tuning.candidates(shipped.finetune)
    assert record["finetune"]["searched"] == {k: list(dict.fromkeys(c[k] for c in grid)) for k in tuning.GRID}
    assert len(record["search"]) == record["finetune"]["candidates"] == len(grid)
    chosen = [c for c in record["search"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["val_log_loss"] == min(c["val_log_loss"] for c in record["search"])
    assert {k: chosen[0][k] for k in ("augment", "unfreeze", "lr")} == {
        k: record["finetune"][k] for k in ("augment", "unfreeze", "lr")}
    assert record["finetune"]["alpha"] in shipped.finetune.interpolate
    assert record["backbone"]["backbone"] == shipped.model.backbone
    assert record["head"]["C"] in shipped.head.C_grid
    if record["finetune"]["improved"]:  # never below the start on validation
        assert record["finetuned"]["val_accuracy"] >= record["finetune"]["start"]["val_accuracy"] - 1e-9


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


def test_the_method_name_says_what_the_search_chose_among():
    ft = {"augment": "none", "unfreeze": 2, "lr": 1e-5, "alpha": 0.75, "improved": True, "candidates": 18,
          "searched": {"augment": ["none", "light", "strong"], "unfreeze": [1, 2], "lr": [1e-5, 3e-5],
                       "head_lr": [0.001], "weight_decay": [0.0001]}}
    assert results._chosen(ft) == ("LP-FT, augmentation none, last 2 blocks, lr 1e-05, α 0.75; chosen on validation "
                                    "among 18 candidates (augment none, light, strong; unfreeze 1, 2; lr 1e-05, 3e-05)")
    assert results._chosen({**ft, "improved": False}).startswith("LP-FT: no candidate beat its start, which is kept;")


def test_readme_and_docs_stay_what_a_reader_reads():
    """README: what it is, the two commands, the generated results, using it, how it is built, the docs index,
    within 6 KiB; docs/ within 70 KiB, the records its figures come from kept in records/."""
    assert len((ROOT / "README.md").read_bytes()) <= 6 * 1024
    assert sum(len(path.read_bytes()) for path in (ROOT / "docs").rglob("*") if path.is_file()) <= 70 * 1024


def test_a_benchmark_run_replaces_the_rows_it_measured_and_keeps_the_others_with_their_machine():
    def run(cpu, date, *rows):
        return {"machine": {"cpu": cpu, "threads": 2, "torch": "2.9"}, "date": date,
                "rows": [{"row": r, "what": f"row {r}", "value": float(r), "unit": "s", "note": ""} for r in rows]}

    record = results.merge_benchmark({}, run("AMD", "2026-12-01", "1", "2"))
    record = results.merge_benchmark(record, run("Intel", "2026-12-02", "2", "3"))
    assert [(r["machine"]["cpu"], [row["row"] for row in r["rows"]]) for r in record["runs"]] == [
        ("AMD", ["1"]), ("Intel", ["2", "3"])]
    record = results.merge_benchmark(record, run("Xeon", "2026-12-03", "1"))  # the AMD run is left without rows
    assert [r["machine"]["cpu"] for r in record["runs"]] == ["Intel", "Xeon"]
    tables = results.benchmark_tables(record)
    assert tables.index("Row 1, measured on 2-thread Xeon, torch 2.9, 2026-12-03:") < tables.index(
        "Rows 2, 3, measured on 2-thread Intel")
    assert "| 3 | row 3 | 3 s |  |" in tables
