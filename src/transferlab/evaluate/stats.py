"""How sure a test-set comparison is: intervals that stay honest at 0 and 100 %, and the exact McNemar test.

A single accuracy gets the Wilson score interval; the paired difference of two methods' accuracies on the same
images Newcombe's hybrid score interval (1998, method 10), built from the two Wilson intervals and the
correlation of the paired outcomes; balanced accuracy and macro F1, which are not one proportion, a posterior
interval: each class's outcomes drawn from their Jeffreys posterior (Beta for a recall, Brodersen et al. 2010;
Dirichlet over true positives, false positives and false negatives for an F1, Goutte & Gaussier 2005), seeded,
averaged over the classes. None of them collapses to a point where every test image is right (a percentile
bootstrap of 90 right answers out of 90 says "1.000–1.000"). McNemar's test looks only at the images one method
gets right and the other wrong.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtri  # the normal quantile: scipy.stats (1 s to import) loads only for McNemar's test

from transferlab.settings.sections import Evaluate

JEFFREYS = 0.5  # the prior count added to each outcome of a class


def _z(confidence: float) -> float:
    return float(ndtri(1 - (1 - confidence) / 2))


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes of n); (0, 1) where n is 0."""
    if n == 0:
        return 0.0, 1.0
    z, p = _z(confidence), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _rounded(low: float, high: float) -> dict[str, float]:
    return {"low": round(float(low), 6), "high": round(float(high), 6)}


def percentile_interval(values: np.ndarray, confidence: float) -> dict[str, float]:
    tail = (1 - confidence) / 2 * 100
    return _rounded(*np.percentile(values, [tail, 100 - tail]))


def posterior_scores(y_true: np.ndarray, predicted: np.ndarray, n_classes: int, draws: int,
                     seed: int) -> dict[str, np.ndarray]:
    """`draws` values of balanced accuracy and macro F1 from each class's Jeffreys posterior: a recall from
    Beta(right + ½, wrong + ½) over the classes the test set holds (scikit-learn's balanced accuracy), an F1 from
    Dirichlet(tp + ½, fp + ½, fn + ½) over the classes it holds or predicts (scikit-learn's macro F1)."""
    rng = np.random.default_rng(seed)
    y, p = np.asarray(y_true), np.asarray(predicted)
    true_positive = np.bincount(y[y == p], minlength=n_classes).astype(float)
    support = np.bincount(y, minlength=n_classes).astype(float)
    predicted_count = np.bincount(p, minlength=n_classes).astype(float)
    held = support > 0
    recall = rng.beta(true_positive[held] + JEFFREYS, support[held] - true_positive[held] + JEFFREYS,
                      size=(draws, int(held.sum())))
    seen = held | (predicted_count > 0)
    counts = np.stack([true_positive, predicted_count - true_positive, support - true_positive], 1)[seen]
    gamma = rng.gamma(counts + JEFFREYS, size=(draws, *counts.shape))  # a Dirichlet draw, unnormalised
    f1 = 2 * gamma[..., 0] / (2 * gamma[..., 0] + gamma[..., 1] + gamma[..., 2])
    return {"balanced_accuracy": recall.mean(1), "macro_f1": f1.mean(1)}


def intervals(y_true: np.ndarray, predicted: np.ndarray, n_classes: int, settings: Evaluate) -> dict[str, Any]:
    """Intervals of accuracy (Wilson), balanced accuracy and macro F1 (posterior draws, `settings.draws`
    seeded by `settings.seed`) at `settings.confidence`."""
    confidence = settings.confidence
    right = int((np.asarray(y_true) == np.asarray(predicted)).sum())
    drawn = posterior_scores(y_true, predicted, n_classes, settings.draws, settings.seed)
    return {"accuracy": _rounded(*wilson(right, len(y_true), confidence)),
            **{metric: percentile_interval(values, confidence) for metric, values in drawn.items()}}


def scores(actual: np.ndarray, predicted: np.ndarray, metric: str, classes: int) -> np.ndarray:
    """`metric` of each row of `predicted` (draws × images, labels 0 … classes − 1) against `actual` (images, or
    draws × images) as scikit-learn scores it: accuracy, balanced accuracy (the mean recall over the classes
    `actual` holds) or macro F1 (over the classes either holds)."""
    actual, predicted = np.broadcast_arrays(np.atleast_2d(actual), np.atleast_2d(predicted))
    right = actual == predicted
    if metric == "accuracy":
        return right.mean(1)
    offset = np.arange(len(actual))[:, None] * classes

    def count(labels: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        shifted = labels + offset
        return np.bincount(shifted[where] if where is not None else shifted.ravel(),
                           minlength=len(actual) * classes).reshape(len(actual), classes)

    true_positive, support = count(actual, right), count(actual)
    if metric == "balanced_accuracy":
        return (true_positive / np.maximum(support, 1)).sum(1) / (support > 0).sum(1)
    either = support + count(predicted)
    return (2 * true_positive / np.maximum(either, 1)).sum(1) / (either > 0).sum(1)


def _draws(settings: Evaluate, chunk: int) -> list[slice]:
    """`settings.draws` in slices of at most `chunk` (memory: chunk × images per array)."""
    return [slice(start, min(start + chunk, settings.draws)) for start in range(0, settings.draws, chunk)]


def bootstrap(actual: np.ndarray, predicted: np.ndarray, metric: str, classes: int, settings: Evaluate,
              chunk: int = 250) -> dict[str, float]:
    """The percentile bootstrap interval of one run's `metric` (labels 0 … classes − 1): the test images
    resampled `settings.draws` times, seeded by `settings.seed`."""
    rng = np.random.default_rng(settings.seed)
    values = np.empty(settings.draws)
    for draws in _draws(settings, chunk):
        index = rng.integers(0, len(actual), (draws.stop - draws.start, len(actual)))
        values[draws] = scores(actual[index], predicted[index], metric, classes)
    return percentile_interval(values, settings.confidence)


def paired_resampled(actual: np.ndarray, first: list[np.ndarray], second: list[np.ndarray], metric: str,
                     classes: int, settings: Evaluate, chunk: int = 250) -> dict[str, Any]:
    """Second − first's `metric` on the same images (labels 0 … classes − 1), averaged over the stacked pairs
    (runs of several seeds): the difference, a paired bootstrap interval (the images resampled, the same for
    both) and a two-sided permutation p (each image's two predictions swapped at random); `settings.draws` of
    each, seeded by `settings.seed`."""
    rng = np.random.default_rng(settings.seed)
    difference = float(np.mean([scores(actual, b, metric, classes)[0] - scores(actual, a, metric, classes)[0]
                                for a, b in zip(first, second)]))
    resampled, permuted = np.zeros(settings.draws), np.zeros(settings.draws)
    for draws in _draws(settings, chunk):
        size = (draws.stop - draws.start, len(actual))
        for a, b in zip(first, second):
            index = rng.integers(0, len(actual), size)
            resampled[draws] += (scores(actual[index], b[index], metric, classes)
                                 - scores(actual[index], a[index], metric, classes))
            swap = rng.random(size) < 0.5
            permuted[draws] += (scores(actual, np.where(swap, a, b), metric, classes)
                                - scores(actual, np.where(swap, b, a), metric, classes))
    resampled, permuted = resampled / len(first), permuted / len(first)
    beyond = int(np.sum(np.abs(permuted) >= abs(difference) - 1e-12))
    return {"difference": round(difference, 6), **percentile_interval(resampled, settings.confidence),
            "p": (1 + beyond) / (settings.draws + 1)}


def newcombe(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) of accuracy(b) − accuracy(a) on the same images."""
    n = len(correct_a)
    both, only_b = int((correct_a & correct_b).sum()), int((correct_b & ~correct_a).sum())
    only_a, neither = int((correct_a & ~correct_b).sum()), int((~correct_a & ~correct_b).sum())
    p_b, p_a = (both + only_b) / n, (both + only_a) / n
    low_b, high_b = wilson(both + only_b, n, confidence)
    low_a, high_a = wilson(both + only_a, n, confidence)
    margins = (both + only_b) * (only_a + neither) * (both + only_a) * (only_b + neither)
    phi = (both * neither - only_a * only_b) / np.sqrt(margins) if margins else 0.0
    below = np.sqrt(max(0.0, (p_b - low_b) ** 2 - 2 * phi * (p_b - low_b) * (high_a - p_a) + (high_a - p_a) ** 2))
    above = np.sqrt(max(0.0, (high_b - p_b) ** 2 - 2 * phi * (high_b - p_b) * (p_a - low_a) + (p_a - low_a) ** 2))
    difference = p_b - p_a
    return max(-1.0, difference - below), min(1.0, difference + above)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (a binomial test of only_b in only_a + only_b)."""
    from scipy.stats import binomtest

    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(only_b, n, 0.5).pvalue)


def paired_accuracy(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float) -> dict[str, Any]:
    """Accuracy(b) − accuracy(a) on the same images (per-image correct, booleans): the difference, Newcombe's
    interval, the images only a and only b gets right, and McNemar's exact p on them; unrounded."""
    low, high = newcombe(correct_a, correct_b, confidence)
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((correct_b & ~correct_a).sum())
    return {"difference": float((correct_b.astype(float) - correct_a).mean()), "low": low, "high": high,
            "only_a": only_a, "only_b": only_b, "p": mcnemar_exact(only_a, only_b)}


def paired(correct: dict[str, np.ndarray], confidence: float) -> dict[str, Any]:
    """Second − first method's accuracy on the same test images ({name: per-image correct}): the difference,
    its interval (`newcombe`), the images only one method gets right, and McNemar's exact test on them."""
    (name_a, correct_a), (name_b, correct_b) = ((k, np.asarray(v, bool)) for k, v in correct.items())
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired comparison needs the same test images ({len(correct_a)} vs {len(correct_b)})")
    pair = paired_accuracy(correct_a, correct_b, confidence)
    return {"difference": round(pair["difference"], 6), **_rounded(pair["low"], pair["high"]),
            "only_correct": {name_a: pair["only_a"], name_b: pair["only_b"]},
            "mcnemar_p": float(f"{pair['p']:.4g}"), "test_images": int(len(correct_a))}


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
    z_alpha, z_beta = _z(confidence), ndtri(power)
    return int(np.ceil((z_alpha * np.sqrt(discordant) + z_beta * np.sqrt(discordant - difference ** 2)) ** 2
                       / difference ** 2))
