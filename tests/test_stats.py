"""Bootstrap intervals and McNemar's test against cases whose answers are known by hand."""
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from transferlab import stats

SETTINGS = {"bootstrap": 20000, "confidence": 0.95, "seed": 0}


def test_accuracy_interval_is_the_exact_bootstrap_distribution():
    # Resampling n images of which k are right makes the accuracy Binomial(n, k/n)/n: its 2.5 and 97.5 % quantiles
    # are the interval, up to one image of Monte-Carlo slack.
    n, k = 50, 40
    y = np.zeros(n, int)
    predicted = np.where(np.arange(n) < k, 0, 1)
    got = stats.intervals(y, predicted, 2, SETTINGS)["accuracy"]
    assert got["low"] == pytest.approx(sps.binom.ppf(0.025, n, k / n) / n, abs=1 / n + 1e-9)
    assert got["high"] == pytest.approx(sps.binom.ppf(0.975, n, k / n) / n, abs=1 / n + 1e-9)
    assert (got["low"], got["high"]) == pytest.approx((0.68, 0.9), abs=0.021)  # 34/50 and 45/50 by hand


def test_tiny_hand_made_cases():
    # two images, one right: resampled accuracy is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4 → interval [0, 1]
    got = stats.intervals(np.array([0, 1]), np.array([0, 0]), 2, SETTINGS)
    assert (got["accuracy"]["low"], got["accuracy"]["high"]) == (0.0, 1.0)
    perfect = stats.intervals(np.array([0, 1, 2]), np.array([0, 1, 2]), 3, SETTINGS)
    for metric in stats.METRICS:
        assert (perfect[metric]["low"], perfect[metric]["high"]) == (1.0, 1.0)
    assert set(perfect) == set(stats.METRICS)


def test_resampled_scores_equal_scikit_learn_on_every_resample():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 40)
    y[0] = 5  # a class with one test image: most resamples miss it
    predicted = np.where(rng.random(40) < 0.6, y, rng.integers(0, 6, 40))
    rows = next(stats.resamples(40, 30, seed=3))
    assert any(len(set(y[row])) < 6 for row in rows)  # some resamples miss a class
    got = stats.resampled_scores(y, predicted, 6, rows)
    for i, row in enumerate(rows):
        t, p = y[row], predicted[row]
        assert got["accuracy"][i] == pytest.approx(skm.accuracy_score(t, p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            assert got["balanced_accuracy"][i] == pytest.approx(skm.balanced_accuracy_score(t, p))
        assert got["macro_f1"][i] == pytest.approx(skm.f1_score(t, p, average="macro", zero_division=0))


def test_resamples_are_seeded_and_chunked():
    a = np.concatenate(list(stats.resamples(7, 600, seed=5)))
    b = np.concatenate(list(stats.resamples(7, 600, seed=5)))
    assert a.shape == (600, 7) and (a == b).all()
    assert [len(block) for block in stats.resamples(7, 600, seed=5)] == [256, 256, 88]
    assert not (a == np.concatenate(list(stats.resamples(7, 600, seed=6)))).all()


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
    pair = stats.paired({"probe": a, "finetune": b}, SETTINGS)
    assert pair["difference"] == pytest.approx(0.06)
    assert pair["only_correct"] == {"probe": 2, "finetune": 8} and pair["test_images"] == 100
    assert pair["mcnemar_p"] == pytest.approx(2 * sps.binom.cdf(2, 10, 0.5), rel=1e-3)  # 0.109
    assert pair["low"] < 0.06 < pair["high"]
    assert not stats.clear(pair, 0.95)  # p = 0.11: within the uncertainty
    mirrored = stats.paired({"finetune": b, "probe": a}, SETTINGS)
    assert (mirrored["difference"], mirrored["low"], mirrored["high"]) == pytest.approx(
        (-0.06, -pair["high"], -pair["low"]))
    same = stats.paired({"probe": a, "finetune": a}, SETTINGS)
    assert (same["difference"], same["low"], same["high"], same["mcnemar_p"]) == (0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="same test images"):
        stats.paired({"probe": a, "finetune": b[:50]}, SETTINGS)


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
