"""The same metrics, tables and predictions for every method (probe, fine-tune), and the paired comparison."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from transferlab.core.errors import UserError
from transferlab.evaluate import stats
from transferlab.settings.sections import Evaluate


def scores(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, top-5 (≥ 5 classes), balanced accuracy, macro F1 and log-loss of class probabilities."""
    labels = np.arange(proba.shape[1])
    predicted = proba.argmax(1)
    out = {
        "accuracy": skm.accuracy_score(y_true, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, predicted),
        "macro_f1": skm.f1_score(y_true, predicted, labels=labels, average="macro", zero_division=0),
        "log_loss": skm.log_loss(y_true, np.clip(proba, 1e-15, 1), labels=labels),
    }
    if proba.shape[1] >= 5:
        out["top5_accuracy"] = skm.top_k_accuracy_score(y_true, proba, k=5, labels=labels)
    return {k: round(float(v), 6) for k, v in out.items()}


def scored(y_true: np.ndarray, proba: np.ndarray, settings: Evaluate) -> dict[str, Any]:
    """`scores` with the intervals of accuracy, balanced accuracy and macro F1 (`evaluate:` params)."""
    return {**scores(y_true, proba), "interval": stats.intervals(y_true, proba.argmax(1), proba.shape[1], settings)}


SCORED = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "top5_accuracy", "interval")


def scored_part(metrics: dict[str, Any]) -> dict[str, Any]:
    """What `scored` gives, read from an evaluate stage's metrics."""
    return {key: metrics[key] for key in SCORED if key in metrics}


def per_class(y_true: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, predicted, labels=np.arange(len(class_names)), zero_division=0)
    return pd.DataFrame({"class": class_names, "precision": precision, "recall": recall, "f1": f1,
                         "support": support})


def versus(baseline: pd.DataFrame, method: str, ids: np.ndarray, correct: np.ndarray,
           settings: Evaluate) -> dict[str, Any]:
    """The paired comparison of `method` with the baseline's predictions.csv on the same test images."""
    mine = pd.Series(correct, index=ids)
    theirs = baseline.set_index("id")["correct"].astype(bool)
    if set(theirs.index) != set(mine.index):
        raise UserError(f"evaluate: the probe's predictions are not of the same test images ({len(theirs)} vs "
                         f"{len(mine)}); re-run evaluate_probe")
    return stats.paired({"probe": theirs.loc[mine.index].to_numpy(), method: mine.to_numpy()}, settings.confidence)


@dataclass(frozen=True)
class Evaluation:
    """One method's metrics, and its test predictions, per-class scores and confusion matrix."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    per_class: pd.DataFrame
    confusion: pd.DataFrame


def evaluate(method: str, proba: dict[str, np.ndarray], labels: dict[str, np.ndarray], ids: np.ndarray,
             class_names: list[str], settings: Evaluate, baseline: pd.DataFrame | None = None,
             tta_proba: np.ndarray | None = None) -> Evaluation:
    """The method's metrics and tables.

    `proba` and `labels` hold the train, val and test splits; ids are the test images. `settings` are the
    `evaluate:` params (stats.intervals); with the probe's predictions as `baseline`, the metrics also
    hold the paired comparison with it (`vs_probe`).
    """
    test_proba, y = proba["test"], labels["test"]
    predicted = test_proba.argmax(1)
    accuracy = {s: float(skm.accuracy_score(labels[s], proba[s].argmax(1))) for s in ("train", "val")}
    result: dict[str, Any] = {
        "method": method,
        **scores(y, test_proba),
        "train_accuracy": round(accuracy["train"], 6),
        "val_accuracy": round(accuracy["val"], 6),
        "train_val_gap": round(accuracy["train"] - accuracy["val"], 6),
        "test_images": int(len(y)),
        "classes": len(class_names),
        "interval": stats.intervals(y, predicted, len(class_names), settings),
    }
    if tta_proba is not None:
        from transferlab.inference.transforms import TTA_VIEWS  # loaded already: the TTA ran

        tta = scores(y, tta_proba)
        result["tta"] = {"views": len(TTA_VIEWS), **{k: tta[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
                         "interval": stats.intervals(y, tta_proba.argmax(1), len(class_names), settings)}
    if baseline is not None:
        result["vs_probe"] = versus(baseline, method, np.asarray(ids), predicted == y, settings)
    names = np.asarray(class_names)
    predictions = pd.DataFrame({"id": ids, "actual": names[y], "predicted": names[predicted],
                                "confidence": test_proba.max(1).round(6), "correct": predicted == y})
    matrix = skm.confusion_matrix(y, predicted, labels=np.arange(len(class_names)))
    confusion = pd.DataFrame(matrix, columns=class_names).assign(actual=class_names).set_index("actual").reset_index()
    return Evaluation(result, predictions, per_class(y, predicted, class_names), confusion)
