"""The learning curve from the sweep's points: one table row per point and method, the curve over seeds, the
reading in words, the plot, and the metrics DVC shows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from transferlab.core.atomic import atomic_path
from transferlab.core.project import METHODS
from transferlab.evaluate import stats


def table(metrics: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per point and method: backbone, fraction, seed, images per class, test scores with the accuracy's
    interval, the setting its validation search chose (the probe's C, the fine-tune's lr), and on fine-tune rows
    the paired difference to the probe with its interval and verdict."""
    rows = []
    for m in metrics:
        for method in METHODS:
            if m.get(method):
                row = {"backbone": m["backbone"], "method": method, "fraction": m["fraction"], "seed": m["seed"],
                       "train_images": m["train_images"], "images_per_class": m["images_per_class"],
                       "test_images": m["test_images"], "accuracy": m[method]["accuracy"],
                       "accuracy_low": m[method]["interval"]["accuracy"]["low"],
                       "accuracy_high": m[method]["interval"]["accuracy"]["high"],
                       "macro_f1": m[method]["macro_f1"], "log_loss": m[method]["log_loss"],
                       "seconds": m[method]["seconds"]}
                row["chosen"] = m[method]["C"] if method == "probe" else m[method]["setting"]
                row["candidates"] = m[method].get("candidates")
                if method == "finetune":
                    pair = m["vs_probe"]
                    row.update(difference=pair["difference"], difference_low=pair["low"],
                               difference_high=pair["high"], mcnemar_p=pair["mcnemar_p"],
                               verdict=lead(pair, m["confidence"]))
                rows.append(row)
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def lead(pair: dict[str, Any], confidence: float) -> str:
    """'finetune' or 'probe' where that method leads by more than the uncertainty, else 'within'."""
    if not stats.clear(pair, confidence):
        return "within"
    return "finetune" if pair["difference"] > 0 else "probe"


POINT_COLUMNS = ["backbone", "method", "fraction", "seed", "train_images", "images_per_class", "test_images",
                 "accuracy", "accuracy_low", "accuracy_high", "macro_f1", "log_loss", "seconds", "chosen", "candidates",
                 "difference",
                 "difference_low", "difference_high", "mcnemar_p", "verdict"]


def _same_or_within(verdicts: pd.Series) -> str:
    """A lead holds for a point only where every seed shows it."""
    values = set(verdicts.dropna())
    return values.pop() if len(values) == 1 else ("within" if values else "")


def _chosen(values: pd.Series) -> str:
    """The settings the seeds' searches chose, each once ("1", or "0.1 / 1"; a fine-tune's in words)."""
    return " / ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(set(values.dropna()), key=str))


def curve(frame: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, method and fraction: mean, min and max test accuracy over seeds, the test-set interval
    (mean of the seeds' bounds), the settings chosen on validation and, for the fine-tune, the paired difference
    to the probe."""
    grouped = frame.groupby(["backbone", "method", "fraction"], as_index=False)
    return grouped.agg(images_per_class=("images_per_class", "mean"), test_images=("test_images", "first"),
                       accuracy=("accuracy", "mean"), accuracy_min=("accuracy", "min"),
                       accuracy_max=("accuracy", "max"), accuracy_low=("accuracy_low", "mean"),
                       accuracy_high=("accuracy_high", "mean"), seeds=("seed", "nunique"),
                       chosen=("chosen", _chosen), candidates=("candidates", "max"),
                       difference=("difference", "mean"), difference_low=("difference_low", "mean"),
                       difference_high=("difference_high", "mean"), mcnemar_p=("mcnemar_p", "max"),
                       verdict=("verdict", _same_or_within))


def _points(sizes: list[float]) -> str:
    return ", ".join(f"{s:g}" for s in sizes) + " images per class"


def _gain(row: Any) -> str:
    return (f"{row.difference * 100:+.1f} points, interval {row.difference_low * 100:+.1f} to "
            f"{row.difference_high * 100:+.1f}, p = {row.mcnemar_p:.2g}")


def reading(points_curve: pd.DataFrame) -> str:
    """One paragraph, from the numbers: at which training-set sizes fine-tuning's lead over the frozen features
    (or the reverse) is larger than its test-set uncertainty, and where it is not."""
    sentences = []
    for backbone, group in points_curve.groupby("backbone", sort=True):
        wide = group.pivot(index="fraction", columns="method", values="accuracy").sort_index()
        per_class = group.groupby("fraction")["images_per_class"].first()
        if "finetune" not in wide:
            best = wide["probe"]
            sentences.append(f"{backbone}: only the frozen-features probe ran; its test accuracy goes from "
                             f"{best.iloc[0]:.1%} at {per_class.iloc[0]:g} images per class to {best.iloc[-1]:.1%} "
                             f"at {per_class.iloc[-1]:g}.")
            continue
        finetuned = group[group["method"] == "finetune"].sort_values("fraction")
        by = {v: finetuned[finetuned["verdict"] == v] for v in ("finetune", "probe", "within")}
        parts = []
        for who, text in (("finetune", "fine-tuning leads by more than its uncertainty at"),
                          ("probe", "the frozen features lead by more than the uncertainty at")):
            if len(by[who]):
                parts.append(f"{text} {_points(by[who]['images_per_class'].tolist())} ("
                             + "; ".join(_gain(r) for r in by[who].itertuples()) + ")")
        if len(by["within"]):
            parts.append(f"at {_points(by['within']['images_per_class'].tolist())} the difference is within the "
                         f"uncertainty of {int(finetuned['test_images'].iloc[0])} test images ("
                         + "; ".join(_gain(r) for r in by["within"].itertuples()) + ")")
        verdicts = finetuned["verdict"].tolist()
        first = verdicts.index("finetune") if "finetune" in verdicts else None
        if first is None:
            advice = ("nowhere does fine-tuning beat the frozen features by more than the test set can tell: keep "
                      "the backbone frozen at these sizes, or measure on more test images")
        elif all(v == "finetune" for v in verdicts[first:]):
            advice = f"fine-tuning pays off from {finetuned['images_per_class'].iloc[first]:g} training images per class on"
        else:
            advice = "fine-tuning's lead is not consistent across sizes: treat it as noise"
        rates = ", ".join(f"{r.chosen} at {r.images_per_class:g}" for r in finetuned.itertuples())
        tuned = (f"The fine-tune's setting chosen on validation (of {finetuned['candidates'].max():g} candidates) at "
                 f"each size: {rates} images per class" if finetuned["candidates"].max() > 1 else
                 f"Every size fine-tunes at the one setting: {finetuned['chosen'].iloc[0]}")
        sentences.append(f"{backbone}: " + "; ".join(parts) + f". {advice[0].upper()}{advice[1:]}. {tuned}.")
    return " ".join(sentences)


def plot(points_curve: pd.DataFrame, out: Path, confidence: float) -> None:
    """Test accuracy against training images per class, a line per method × backbone with the test-set interval
    as error bars (the two methods nudged apart), a band over seeds; the legend below the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6))
    for (backbone, method), group in points_curve.groupby(["backbone", "method"], sort=True):
        group = group.sort_values("images_per_class")
        x = group["images_per_class"] * (1.02 if method == "finetune" else 0.98)
        error = [group["accuracy"] - group["accuracy_low"], group["accuracy_high"] - group["accuracy"]]
        line, _, _ = ax.errorbar(x, group["accuracy"], yerr=error, marker="o", capsize=3,
                                 linestyle="-" if method == "finetune" else "--", label=f"{method} · {backbone}")
        if (group["seeds"] > 1).any():
            ax.fill_between(group["images_per_class"], group["accuracy_min"], group["accuracy_max"],
                            color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ticks = sorted(points_curve["images_per_class"].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curve: frozen features + linear head vs fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False,
              title=f"error bars: {confidence:.0%} interval over the test images")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def metrics(points_curve: pd.DataFrame) -> dict[str, Any]:
    """Mean test accuracy as {backbone: {"<percent> of train": {method: accuracy}}}: one column per point in
    `dvc exp show` and `dvc metrics show`."""
    out: dict[str, Any] = {}
    for r in points_curve.itertuples():
        out.setdefault(r.backbone, {}).setdefault(f"{r.fraction:.0%} of train", {})[r.method] = round(r.accuracy, 6)
    return out
