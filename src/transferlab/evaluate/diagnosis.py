"""Why the fine-tune won or lost, from what ran: findings computed from its summary and search table, each with
the advice it supports, so that the report's verdict explains a loss instead of guessing its cause."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

HARDER = 0.10  # training accuracy on an augmentation's views this far below validation accuracy: harder images


@dataclass(frozen=True)
class Finding:
    """One thing the records show (`key`), said in a sentence, and the advice that follows from it."""

    key: str
    text: str
    advice: str


def augmentation_harder(search: pd.DataFrame) -> list[Finding]:
    """Each augmentation whose candidates, at their last epoch, got far fewer of their augmented training views
    right than of the plain validation images (median over its candidates: more than HARDER apart)."""
    trained = search[(search["epoch"] > 0) & (search["augment"] != "none")]
    out = []
    for name, rows in trained.groupby("augment", sort=False):
        last = rows.groupby("candidate").tail(1)
        train, val = last["train_accuracy"].median(), last["val_accuracy"].median()
        if val - train > HARDER:
            out.append(Finding(
                "augmentation_harder",
                f"the augmentation “{name}” makes training images harder than the test images (training accuracy "
                f"{train:.0%} on its views, validation {val:.0%}): it may not suit this data",
                f"leave “{name}” out of finetune.augment (or keep “none” in the list)"))
    return out


def findings(summary: dict[str, Any], search: pd.DataFrame) -> list[Finding]:
    """Every finding that applies to a fine-tune run: an augmentation that makes training harder, diverged
    candidates, no candidate better than the start, and an interpolation optimum strictly inside (0, 1)."""
    out = augmentation_harder(search)
    candidates = summary["candidates"]
    if summary["diverged"]:
        auto = " (finetune.lr: auto, around the range test's suggestion)" if summary.get("lr_auto") else ""
        out.append(Finding(
            "diverged",
            f"{len(summary['diverged'])} of {candidates} candidates diverged on validation{auto}: "
            + "; ".join(summary["diverged"]),
            "search smaller backbone learning rates (finetune.lr)"))
    if not summary["improved"]:
        start = summary["start"]["val_accuracy"]
        out.append(Finding(
            "no_improvement",
            f"fine-tuning did not improve on its start (the probe's head on the frozen backbone, validation accuracy "
            f"{start:.1%}) in {candidates} candidate{'s' if candidates != 1 else ''}, so the fine-tuned model is "
            f"that start",
            "keep the frozen features" if out else
            "keep the frozen features: at these settings the data gives fine-tuning nothing the probe lacks"))
    if 0 < summary.get("alpha", 1.0) < 1:
        out.append(Finding(
            "interpolation_inside",
            f"mixing the fine-tuned weights with the start (α = {summary['alpha']:g}) scored better on validation "
            f"than either end: the fine-tune moved further from the start than the data supports",
            "keep the mixed weights (they are the exported model); a smaller learning rate or fewer epochs may "
            "reach them directly"))
    return out


def advice(found: list[Finding], default: str) -> str:
    """The verdict's advice: what the findings support (each once), else `default`."""
    said = list(dict.fromkeys(f.advice for f in found))
    return (said[0][0].upper() + "; ".join(said)[1:] + ".") if said else default
