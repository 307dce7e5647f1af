"""How sure a test-set comparison is: bootstrap intervals over test images and the exact McNemar test.

Every interval resamples the test images with replacement (seeded), recomputes the metric on each resample
and takes the percentiles; paired intervals use the same resamples for both methods, so an image that is hard
for both counts once. McNemar's test looks only at the images one method gets right and the other wrong.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.special import ndtri  # the normal quantile: scipy.stats (1 s to import) loads only for McNemar's test

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
# Resamples per block: bounds memory at CHUNK × test images indices whatever the test set's size.
CHUNK = 256


def resamples(n: int, count: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of bootstrap index rows (each row: n test-image indices drawn with replacement)."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, CHUNK):
        yield rng.integers(0, n, size=(min(CHUNK, count - start), n))


def resampled_scores(y_true: np.ndarray, predicted: np.ndarray, n_classes: int,
                     rows: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 on each row of indices, as scikit-learn computes them with its
    default labels: balanced accuracy over the classes a resample holds, F1 over those it holds or predicts."""
    count = len(rows)
    y, p = y_true[rows], predicted[rows]
    offset = (np.arange(count) * n_classes)[:, None]
    correct = y == p

    def per_class(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        flat = (values + offset)[where] if where is not None else (values + offset).ravel()
        return np.bincount(flat, minlength=count * n_classes).reshape(count, n_classes).astype(float)

    true_positive, support, predicted_count = per_class(y, correct), per_class(y), per_class(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, true_positive / support, np.nan)
        denominator = support + predicted_count  # 2·tp + fp + fn
        f1 = np.where(denominator > 0, 2 * true_positive / denominator, np.nan)
    return {"accuracy": correct.mean(1), "balanced_accuracy": np.nanmean(recall, 1), "macro_f1": np.nanmean(f1, 1)}


def percentile_interval(values: np.ndarray, confidence: float) -> dict[str, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"low": round(float(low), 6), "high": round(float(high), 6)}


def intervals(y_true: np.ndarray, predicted: np.ndarray, n_classes: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Bootstrap intervals of accuracy, balanced accuracy and macro F1 over the test images."""
    blocks = [resampled_scores(y_true, predicted, n_classes, rows)
              for rows in resamples(len(y_true), settings["bootstrap"], settings["seed"])]
    return {metric: percentile_interval(np.concatenate([b[metric] for b in blocks]), settings["confidence"])
            for metric in METRICS}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (a binomial test of only_b in only_a + only_b)."""
    from scipy.stats import binomtest

    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(only_b, n, 0.5).pvalue)


def paired(correct: dict[str, np.ndarray], settings: dict[str, Any]) -> dict[str, Any]:
    """Second − first method's accuracy on the same test images ({name: per-image correct}): the difference,
    its bootstrap interval, the images only one method gets right, and McNemar's exact test on them."""
    (name_a, correct_a), (name_b, correct_b) = ((k, np.asarray(v, bool)) for k, v in correct.items())
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired comparison needs the same test images ({len(correct_a)} vs {len(correct_b)})")
    gain = correct_b.astype(float) - correct_a
    diffs = np.concatenate([gain[rows].mean(1)
                            for rows in resamples(len(gain), settings["bootstrap"], settings["seed"])])
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((correct_b & ~correct_a).sum())
    return {"difference": round(float(gain.mean()), 6), **percentile_interval(diffs, settings["confidence"]),
            "only_correct": {name_a: only_a, name_b: only_b}, "mcnemar_p": float(f"{mcnemar_exact(only_a, only_b):.4g}"),
            "test_images": int(len(gain))}


def clear(pair: dict[str, Any], confidence: float) -> bool:
    """True where the difference is larger than its uncertainty: interval clear of 0 and McNemar significant."""
    return (pair["low"] > 0 or pair["high"] < 0) and pair["mcnemar_p"] < 1 - confidence


def images_needed(pair: dict[str, Any], confidence: float, power: float = 0.8) -> int | None:
    """Test images McNemar's test would need to detect the observed difference at the observed disagreement
    rate (Connor 1987 sample size); None where there is no difference to detect."""
    n = pair["test_images"]
    discordant = sum(pair["only_correct"].values()) / n
    difference = abs(pair["difference"])
    if difference == 0:
        return None
    z_alpha, z_beta = ndtri(1 - (1 - confidence) / 2), ndtri(power)
    return int(np.ceil((z_alpha * np.sqrt(discordant) + z_beta * np.sqrt(discordant - difference ** 2)) ** 2
                       / difference ** 2))
