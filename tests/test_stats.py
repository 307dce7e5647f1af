"""Intervals and McNemar's test against cases whose answers are known by hand."""
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from transferlab.core.project import METRICS
from transferlab.evaluate import stats
from transferlab.settings.sections import Evaluate

SETTINGS = Evaluate(draws=20000, confidence=0.95, seed=0, tta=False)


def test_accuracy_interval_is_wilsons_by_hand():
    # 40 right of 50 at 95 %: centre (0.8 + 1.96²/100) / (1 + 1.96²/50), half-width 1.96/(1 + 1.96²/50) ·
    # √(0.8·0.2/50 + 1.96²/10000): 0.6696 to 0.8876
    got = stats.intervals(np.zeros(50, int), np.where(np.arange(50) < 40, 0, 1), 2, SETTINGS)["accuracy"]
    assert (got["low"], got["high"]) == pytest.approx((0.6696, 0.8876), abs=1e-4)
    z = sps.norm.ppf(0.975)
    centre, half = (0.8 + z * z / 100) / (1 + z * z / 50), z / (1 + z * z / 50) * np.sqrt(0.16 / 50 + z * z / 1e4)
    assert (got["low"], got["high"]) == pytest.approx((centre - half, centre + half), abs=1e-6)


def test_intervals_do_not_collapse_at_0_or_100_percent():
    # 90 of 90 right: the percentile bootstrap said "1.000–1.000"; Wilson's lower end is n / (n + z²)
    y = np.repeat(np.arange(3), 30)
    perfect = stats.intervals(y, y, 3, SETTINGS)
    z = sps.norm.ppf(0.975)
    assert perfect["accuracy"] == {"low": pytest.approx(90 / (90 + z * z), abs=1e-6), "high": 1.0}
    for metric in METRICS:
        assert 0.9 < perfect[metric]["low"] < perfect[metric]["high"] <= 1.0
    wrong = stats.intervals(y, (y + 1) % 3, 3, SETTINGS)
    for metric in METRICS:
        assert 0.0 <= wrong[metric]["low"] < wrong[metric]["high"] < 0.1
    assert set(perfect) == set(METRICS)


def test_posterior_draws_centre_on_scikit_learn_and_are_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    y[0] = 5  # a class with one test image
    predicted = np.where(rng.random(400) < 0.7, y, rng.integers(0, 7, 400))  # class 6 is predicted, never true
    drawn = stats.posterior_scores(y, predicted, 7, 20000, seed=3)
    # Jeffreys posteriors on hundreds of images: their means sit near the plug-in scores scikit-learn computes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        assert drawn["balanced_accuracy"].mean() == pytest.approx(skm.balanced_accuracy_score(y, predicted), abs=0.06)
    assert drawn["macro_f1"].mean() == pytest.approx(skm.f1_score(y, predicted, average="macro", zero_division=0),
                                                     abs=0.06)
    again = stats.posterior_scores(y, predicted, 7, 20000, seed=3)
    assert all((drawn[k] == again[k]).all() for k in drawn)
    other = stats.posterior_scores(y, predicted, 7, 20000, seed=4)
    assert not (drawn["macro_f1"] == other["macro_f1"]).all()


def test_balanced_accuracy_of_one_class_is_its_beta_posterior():
    # one class, 18 of 20 right: the recall's posterior is Beta(18.5, 2.5), so the interval is its quantiles
    y = np.zeros(20, int)
    got = stats.intervals(y, np.where(np.arange(20) < 18, 0, 1), 2, SETTINGS)["balanced_accuracy"]
    assert (got["low"], got["high"]) == pytest.approx(sps.beta.ppf([0.025, 0.975], 18.5, 2.5), abs=0.005)


@pytest.mark.parametrize("only_a, only_b, p", [(1, 9, 22 / 1024), (9, 1, 22 / 1024), (0, 6, 2 / 64), (5, 5, 1.0),
                                               (0, 0, 1.0)])
def test_mcnemar_exact_on_known_tables(only_a, only_b, p):
    # 1 vs 9 discordant pairs: 2 · P(X ≤ 1 | Binomial(10, 1/2)) = 2 · 11/1024
    assert stats.mcnemar_exact(only_a, only_b) == pytest.approx(p)


def test_paired_difference_interval_and_counts():
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 1] * 10, bool)  # 70 % right
    b = a.copy()
    b[[3, 4, 6, 13, 14, 16, 23, 24]] = True  # fine-tune gets 8 more right ...
    b[[0, 10]] = False  # ... and 2 fewer
    pair = stats.paired({"probe": a, "finetune": b}, SETTINGS.confidence)
    assert pair["difference"] == pytest.approx(0.06)
    assert pair["only_correct"] == {"probe": 2, "finetune": 8} and pair["test_images"] == 100
    assert pair["mcnemar_p"] == pytest.approx(2 * sps.binom.cdf(2, 10, 0.5), rel=1e-3)  # 0.109
    assert pair["low"] < 0.06 < pair["high"]
    assert not stats.clear(pair, 0.95)  # p = 0.11: within the uncertainty

    mirrored = stats.paired({"finetune": b, "probe": a}, SETTINGS.confidence)
    assert (mirrored["difference"], mirrored["low"], mirrored["high"]) == pytest.approx(
        (-0.06, -pair["high"], -pair["low"]))
    same = stats.paired({"probe": a, "finetune": a}, SETTINGS.confidence)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["low"] < 0 < same["high"]
    everything = np.ones(90, bool)  # both right on all 90 images: a difference of 0, not known to be exactly 0
    both_perfect = stats.paired({"probe": everything, "finetune": everything}, SETTINGS.confidence)
    assert -0.05 < both_perfect["low"] < 0 < both_perfect["high"] < 0.05
    with pytest.raises(ValueError, match="same test images"):
        stats.paired({"probe": a, "finetune": b[:50]}, SETTINGS.confidence)


def test_paired_interval_covers_the_true_difference_95_times_in_100():
    # 2,000 simulated paired test sets of 120 images, the methods' outcomes correlated as two networks' are
    rng = np.random.default_rng(0)
    cells = np.array([0.70, 0.05, 0.12, 0.13])  # both right, only probe, only fine-tune, neither: a +7-point gain
    covered = 0
    for _ in range(2000):
        kind = rng.choice(4, size=120, p=cells)
        pair = stats.paired({"probe": np.isin(kind, [0, 1]), "finetune": np.isin(kind, [0, 2])}, SETTINGS.confidence)
        covered += pair["low"] <= 0.07 <= pair["high"]
    assert 0.93 <= covered / 2000 <= 0.975


def test_clear_needs_both_the_interval_and_the_test():
    lead = {"difference": 0.05, "low": 0.01, "high": 0.09, "mcnemar_p": 0.01}
    assert stats.clear(lead, 0.95)
    assert stats.clear({**lead, "difference": -0.05, "low": -0.09, "high": -0.01}, 0.95)
    assert not stats.clear({**lead, "mcnemar_p": 0.2}, 0.95)
    assert not stats.clear({**lead, "low": -0.01}, 0.95)
    assert not stats.clear({**lead, "mcnemar_p": 0.03}, 0.99)


def test_images_needed_by_hand():
    # 10 % of images discordant, a 2-point difference: (1.96·√0.1 + 0.8416·√(0.1 − 0.0004))² / 0.0004 ≈ 1960
    pair = {"test_images": 1000, "only_correct": {"probe": 40, "finetune": 60}, "difference": 0.02}
    assert stats.images_needed(pair, 0.95) == pytest.approx(1960, abs=2)
    assert stats.images_needed({**pair, "difference": 0.04}, 0.95) < 1000
    assert stats.images_needed({**pair, "difference": 0.0}, 0.95) is None
