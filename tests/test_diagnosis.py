"""The report's findings on constructed search tables and summaries, and the advice the verdict derives."""
import pandas as pd

from transferlab.evaluate import diagnosis
from transferlab.reporting import report


def search(rows):
    """A search table from (candidate, augment, epoch, train_accuracy, val_accuracy, val_loss) rows."""
    return pd.DataFrame(rows, columns=["candidate", "augment", "epoch", "train_accuracy", "val_accuracy", "val_loss"])


def summary(**over):
    base = {"candidates": 2, "diverged": [], "improved": True, "start": {"val_accuracy": 0.9}, "alpha": 1.0,
            "lr_auto": False}
    return {**base, **over}


FINE = search([(0, "none", 0, None, 0.9, 0.3), (0, "none", 1, 0.95, 0.92, 0.25),
               (1, "strong", 0, None, 0.9, 0.3), (1, "strong", 1, 0.88, 0.91, 0.28)])


def test_a_healthy_search_has_nothing_to_explain():
    assert diagnosis.findings(summary(), FINE) == []


def test_an_augmentation_that_makes_training_harder_is_named():
    harder = search([(0, "none", 0, None, 0.85, 0.4), (0, "none", 1, 0.9, 0.86, 0.38),
                     (1, "strong", 0, None, 0.85, 0.4), (1, "strong", 1, 0.35, 0.84, 0.5),
                     (2, "strong", 1, 0.6, 0.85, 0.45)])
    found = diagnosis.findings(summary(candidates=3), harder)
    assert [f.key for f in found] == ["augmentation_harder"]
    assert "“strong” makes training images harder than the test images (training accuracy 48%" in found[0].text


def test_divergence_no_improvement_and_an_inner_alpha_are_found():
    found = diagnosis.findings(summary(diverged=["none, 2 blocks, lr 1, head 0.001, wd 0"], improved=False), FINE)
    assert [f.key for f in found] == ["diverged", "no_improvement"]
    assert found[0].text.startswith("1 of 2 candidates diverged on validation: none, 2 blocks, lr 1")
    assert "did not improve on its start" in found[1].text and "validation accuracy 90.0%" in found[1].text
    inside = diagnosis.findings(summary(alpha=0.5), FINE)
    assert [f.key for f in inside] == ["interpolation_inside"] and "α = 0.5" in inside[0].text


def test_the_verdict_s_advice_comes_from_the_findings_never_a_fixed_phrase():
    probe = {"accuracy": 0.97, "test_images": 300, "interval": {"accuracy": {"low": 0.94, "high": 0.98}}}
    finetune = {"accuracy": 0.86, "vs_probe": {"difference": -0.11, "low": -0.15, "high": -0.07, "mcnemar_p": 1e-5,
                                               "test_images": 300, "only_correct": {"probe": 40, "finetune": 7}}}
    harder = diagnosis.Finding("augmentation_harder", "the augmentation “strong” makes training images harder",
                               "leave “strong” out of finetune.augment")
    text = report.verdict(probe, finetune, 5.0, 0.95, [harder])
    assert "What the runs show: the augmentation “strong” makes training images harder." in text
    assert text.endswith("Leave “strong” out of finetune.augment.") and "smaller learning rate" not in text
    assert report.verdict(probe, finetune, 5.0, 0.95).endswith("Keep the backbone frozen.")
