"""The report's figures, drawn with matplotlib (Agg) and returned as data URIs; each also saved as a PNG for
Snakemake's report."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # class names are text: "cost $\\frac$" is no formula
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from transferlab.core.atomic import atomic_path  # noqa: E402
from transferlab.core.project import METHOD_NAMES  # noqa: E402
from transferlab.finetuning import tuning  # noqa: E402


def png(fig: plt.Figure, out: Path | None) -> str:
    """Encode a figure as a data URI (and save it to `out` for Snakemake's report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_bytes(buf.getvalue())
    return data_uri(buf.getvalue())


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def confusion_figure(methods: dict[str, dict[str, Any]], out: Path) -> str:
    """Row-normalised confusion matrices with a colour bar; each non-zero cell carries its image count."""
    run = [m for m in methods if methods[m]["ran"]]
    fig, axes = plt.subplots(1, len(run), figsize=(7.5 * len(run), 6.8), squeeze=False, layout="constrained")
    for ax, m in zip(axes[0], run):
        matrix = methods[m]["confusion"]
        counts = matrix.to_numpy(dtype=float)
        norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        shown = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        names = list(matrix.columns)
        small = len(names) > 12
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=5 if small else 9,
                    color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if small else 9)
        ax.set_yticks(range(len(names)), names, fontsize=6 if small else 9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{METHOD_NAMES[m]}\n(colour: share of the true class; numbers: test images)")
        fig.colorbar(shown, ax=ax, shrink=0.8, label="share of the row")
    return png(fig, out)


def _legend_below(fig: plt.Figure, ax: plt.Axes) -> None:
    """One legend under the axes (of a constrained-layout figure), where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)


def per_class_figure(methods: dict[str, dict[str, Any]], out: Path) -> str:
    run = [m for m in methods if methods[m]["ran"]]
    names = list(methods[run[0]]["per_class"]["class"])
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names) + 2), 4))
    width = 0.8 / len(run)
    for i, m in enumerate(run):
        ax.bar(np.arange(len(names)) + i * width, methods[m]["per_class"]["recall"], width, label=METHOD_NAMES[m])
    ax.set_xticks(np.arange(len(names)) + width * (len(run) - 1) / 2, names, rotation=90, fontsize=7)
    ax.set_ylabel("test accuracy of the class (recall)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(run), frameon=False)
    return png(fig, out)


def learning_figure(history: pd.DataFrame | None, out: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    if history is None:
        for ax in axes:
            ax.text(0.5, 0.5, "fine-tune not run", ha="center", va="center")
            ax.set_axis_off()
    else:
        for ax, what in zip(axes, ("loss", "accuracy")):
            ax.plot(history["epoch"], history[f"train_{what}"], "o-", label="train")
            ax.plot(history["epoch"], history[f"val_{what}"], "o-", label="validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(what)
        _legend_below(fig, axes[0])
    fig.suptitle("Fine-tune learning curves")
    return png(fig, out)


def _plain_log_ticks(ax: plt.Axes) -> None:
    """Log-axis tick labels as plain numbers (1e-05, 0.1, 10): mathtext is off, so matplotlib's default
    10^{n} labels would show as TeX source."""
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def search_figure(tuning_info: dict[str, Any], out: Path) -> str:
    """Both arms' searches on the validation split side by side: the probe's validation log-loss per C, the
    fine-tune's validation loss per epoch and candidate (the chosen one bold), and the LR range test."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.9), layout="constrained")
    head_search, ft_search, curve = (tuning_info[k] for k in ("head", "finetune", "range_test"))
    ax = axes[0]
    ax.plot(head_search["C"], head_search["val_log_loss"], "o-")
    best = head_search[head_search["chosen"]]
    ax.plot(best["C"], best["val_log_loss"], "o", ms=12, mfc="none", mec="C3", label="chosen")
    ax.set(xscale="log", xlabel="C", ylabel="validation log-loss",
           title=f"Probe: C search ({len(head_search)} candidates)")
    _plain_log_ticks(ax)
    ax.legend(frameon=False)
    ax = axes[1]
    if ft_search is None:
        ax.text(0.5, 0.5, "fine-tune not run", ha="center", va="center")
        ax.set_axis_off()
    else:
        labelled = set()
        for _, rows in ft_search.groupby("candidate"):  # one colour per augmentation, the chosen candidate bold
            first = rows.iloc[0]
            chosen = bool(first["chosen"])
            name = f"augmentation {first['augment']}"
            ax.plot(rows["epoch"], rows["val_loss"], "o-", lw=1, alpha=0.5, ms=3,
                    color=f"C{int(first['augment_rank'])}", label=None if name in labelled else name)
            labelled.add(name)
            if chosen:
                ax.plot(rows["epoch"], rows["val_loss"], "o-", lw=2.5, color="black",
                        label=f"chosen: {tuning.label(first)}")
        ax.set(xlabel="epoch (0: the start)", ylabel="validation loss (log-loss)",
               title=f"Fine-tune: search ({ft_search['candidate'].nunique()} candidates)")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize=7)
    ax = axes[2]
    if curve is None or curve.empty:
        ax.text(0.5, 0.5, "LR range test not run", ha="center", va="center")
        ax.set_axis_off()
    else:
        ax.plot(curve["lr"], curve["loss"], ".", alpha=0.35, label="batch loss")
        ax.plot(curve["lr"], curve["smoothed"], "-", label="smoothed")
        edge = curve.iloc[tuning.edge(curve)]
        ax.axvline(edge["lr"], color="C3", ls=":", label=f"edge {edge['lr']:.2g}")
        ax.axvline(tuning.suggest(curve), color="C2", ls="--", label=f"suggested {tuning.suggest(curve):.2g}")
        ax.set(xscale="log", xlabel="backbone learning rate", ylabel="training loss",
               title="LR range test (from the warm start)")
        _plain_log_ticks(ax)
        ax.legend(frameon=False, fontsize=7)
    interpolation_panel(axes[3], tuning_info.get("interpolation"), tuning_info.get("alpha"))
    return png(fig, out)


def interpolation_panel(ax: plt.Axes, rows: list[dict[str, float]] | None, alpha: float | None) -> None:
    """WiSE-FT: validation and test accuracy of the start and fine-tune mixed at each α (chosen on validation)."""
    if not rows:
        ax.text(0.5, 0.5, "interpolation not run\n(no candidate beat the start,\nor finetune.interpolate: [1])",
                ha="center", va="center")
        ax.set_axis_off()
        return
    table = pd.DataFrame(rows)
    ax.plot(table["alpha"], table["val_accuracy"], "o-", label="validation")
    ax.plot(table["alpha"], table["test_accuracy"], "s--", label="test (shown, never chosen on)")
    ax.axvline(alpha, color="C3", ls=":", label=f"chosen α = {alpha:g}")
    ax.set(xlabel="α (0: the start, 1: the fine-tune)", ylabel="accuracy", title="Start and fine-tune mixed (WiSE-FT)")
    ax.legend(frameon=False, fontsize=7)


def reliability_figure(methods: dict[str, dict[str, Any]], out: Path, bins: int = 10) -> str:
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for m, info in methods.items():
        if not info["ran"]:
            continue
        pred = info["predictions"]
        which = np.clip(np.digitize(pred["confidence"], edges) - 1, 0, bins - 1)
        conf = [pred["confidence"][which == b].mean() for b in range(bins) if (which == b).any()]
        acc = [pred["correct"][which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(conf, acc, "o-", label=METHOD_NAMES[m])
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (test)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=1, frameon=False, fontsize=8)
    return png(fig, out)
