"""The report stage: one self-contained HTML page comparing feature extraction with fine-tuning."""
from __future__ import annotations

import base64
import datetime as dt
import importlib.metadata
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: E402

from . import params as params_mod  # noqa: E402
from .atomic import atomic_path  # noqa: E402
from .images import load_rgb  # noqa: E402

METHODS = {"probe": "Frozen features + linear head", "finetune": "Fine-tuned"}
# metric key, label, True when higher is better
ROWS = [("accuracy", "Test accuracy", True), ("top5_accuracy", "Top-5 accuracy", True),
        ("balanced_accuracy", "Balanced accuracy", True), ("macro_f1", "Macro F1", True),
        ("log_loss", "Log-loss", False), ("train_val_gap", "Train–val gap (overfitting risk)", False),
        ("trainable_parameters", "Trainable parameters", None), ("learning_rate", "Learning rate", None),
        ("epochs", "Epochs", None), ("seconds", "Wall-clock seconds (extraction counted for both)", False)]
GALLERY_CAP = 24
LIBRARIES = ["torch", "torchvision", "scikit-learn", "numpy", "pandas", "matplotlib", "dvc", "snakemake"]


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _png(fig: plt.Figure, out: Path | None) -> str:
    """Encode a figure as a data URI (and save it to `out` for Snakemake's report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_bytes(buf.getvalue())
    return _data_uri(buf.getvalue())


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _embed_png(path: Path) -> str:
    return _data_uri(path.read_bytes())


def visualizations(results: Path) -> dict[str, Any] | None:
    """The visualize stage's summary with its PNGs embedded, or None where it did not run."""
    folder = results / "visualize"
    summary = _json(folder / "summary.json")
    if not summary or summary.get("skipped"):
        return None
    for item in summary["ideal"].values():
        item["src"] = _embed_png(folder / item["image"])
    for i, attack in enumerate(summary["adversarial"]):
        attack["src"] = {kind: _embed_png(folder / f"adversarial_{i}_{kind}.png")
                         for kind in ("original", "perturbation", "adversarial")}
    summary["feature_maps"]["src"] = _embed_png(folder / summary["feature_maps"]["figure"])
    return summary


def learning_curve(results: Path) -> dict[str, Any] | None:
    """The sweep's curve (figure embedded, table, generated reading), or None where the sweep did not run."""
    folder = results / "curve"
    summary = _json(folder / "summary.json")
    if not summary or summary.get("skipped"):
        return None
    table = pd.read_csv(folder / "curve.csv").sort_values(["backbone", "fraction", "method"])
    return {**summary, "src": _embed_png(folder / "curve.png"), "rows": table.to_dict("records")}


def _thumb(path: Path, size: int = 112) -> str:
    try:
        image = load_rgb(path, size)
    except OSError:
        return ""
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return _data_uri(buf.getvalue(), "image/jpeg")


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (result.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")) or "unknown"


def comparison(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: one value per method, the better one marked where that has a meaning."""
    rows = []
    for key, label, higher in ROWS:
        values = {m: info["row"].get(key) for m, info in methods.items()}
        present = {m: v for m, v in values.items() if isinstance(v, (int, float))}
        best = None
        if higher is not None and len(present) == 2 and len(set(present.values())) == 2:
            best = (max if higher else min)(present, key=present.get)
        rows.append({"key": key, "label": label, "values": values, "best": best})
    return rows


def confusion_figure(methods: dict[str, dict[str, Any]], out: Path) -> str:
    run = [m for m in methods if methods[m]["ran"]]
    fig, axes = plt.subplots(1, len(run), figsize=(7 * len(run), 6.5), squeeze=False)
    for ax, m in zip(axes[0], run):
        matrix = methods[m]["confusion"]
        counts = matrix.to_numpy(dtype=float)
        norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        names = list(matrix.columns)
        small = len(names) > 12
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if small else 9)
        ax.set_yticks(range(len(names)), names, fontsize=6 if small else 9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{METHODS[m]} (rows normalised)")
    return _png(fig, out)


def per_class_figure(methods: dict[str, dict[str, Any]], out: Path) -> str:
    run = [m for m in methods if methods[m]["ran"]]
    names = list(methods[run[0]]["per_class"]["class"])
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(names) + 2), 4))
    width = 0.8 / len(run)
    for i, m in enumerate(run):
        ax.bar(np.arange(len(names)) + i * width, methods[m]["per_class"]["recall"], width, label=METHODS[m])
    ax.set_xticks(np.arange(len(names)) + width * (len(run) - 1) / 2, names, rotation=90, fontsize=7)
    ax.set_ylabel("test accuracy of the class (recall)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    return _png(fig, out)


def learning_figure(history: pd.DataFrame | None, out: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
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
            ax.legend()
    fig.suptitle("Fine-tune learning curves")
    return _png(fig, out)


def reliability_figure(methods: dict[str, dict[str, Any]], out: Path, bins: int = 10) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for m, info in methods.items():
        if not info["ran"]:
            continue
        pred = info["predictions"]
        which = np.clip(np.digitize(pred["confidence"], edges) - 1, 0, bins - 1)
        conf = [pred["confidence"][which == b].mean() for b in range(bins) if (which == b).any()]
        acc = [pred["correct"][which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(conf, acc, "o-", label=METHODS[m])
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram (test)")
    ax.legend(fontsize=8)
    return _png(fig, out)


def _load_method(method: str, results: Path, extra: dict[str, Any]) -> dict[str, Any]:
    metrics = _json(results / "metrics" / f"{method}.json")
    ran = bool(metrics) and not metrics.get("skipped")
    info: dict[str, Any] = {"ran": ran, "metrics": metrics or {}, "row": {}}
    if not ran:
        return info
    folder = results / "eval" / method
    info["predictions"] = pd.read_csv(folder / "predictions.csv")
    info["per_class"] = pd.read_csv(folder / "per_class.csv")
    info["confusion"] = pd.read_csv(folder / "confusion_matrix.csv", index_col="actual")
    info["row"] = {**metrics, **extra}
    return info


def gather(params: dict[str, Any], data_dir: Path, results: Path) -> dict[str, Any]:
    """Everything the page shows, read from the stage outputs that exist."""
    dataset = _json(data_dir / "dataset.json")
    splits = _json(data_dir / "splits" / "summary.json")
    meta = _json(results / "features" / "meta.json")
    head_summary = _json(results / "head" / "summary.json") or {}
    ft = _json(results / "finetune" / "summary.json") or {"skipped": True, "reason": "finetune stage not run"}
    extract_seconds = sum(s["seconds"] for s in meta["splits"].values())
    probe_extra = {"trainable_parameters": head_summary.get("trainable_parameters"), "learning_rate": "lbfgs (C = "
                   f"{head_summary.get('C')})", "epochs": "—",
                   "seconds": round(extract_seconds + head_summary.get("seconds", 0), 1)}
    methods = {"probe": _load_method("probe", results, probe_extra)}
    ft_extra = {}
    if not ft.get("skipped"):
        ft_extra = {"trainable_parameters": ft["trainable_parameters"], "learning_rate":
                    f"{ft['lr']:g} (head {ft['head_lr']:g})", "epochs": f"{ft['epochs_run']} (best {ft['best_epoch']})",
                    "seconds": round(extract_seconds + head_summary.get("seconds", 0) + ft["seconds"], 1)}
    methods["finetune"] = _load_method("finetune", results, ft_extra)
    history_path = results / "finetune" / "history.csv"
    history = pd.read_csv(history_path) if methods["finetune"]["ran"] and history_path.exists() else None
    stage_costs = [{"stage": f"extract ({split})", "images": s["images"], "seconds": s["seconds"],
                    "images_per_s": s["images_per_s"]} for split, s in meta["splits"].items()]
    stage_costs.append({"stage": "train_head (C search + refit)", "images": head_summary.get("train_rows"),
                        "seconds": head_summary.get("seconds"), "images_per_s": None})
    if methods["finetune"]["ran"]:
        stage_costs.append({"stage": f"finetune ({ft['epochs_run']} epochs)", "images": None,
                            "seconds": ft["seconds"], "images_per_s": ft["train_images_per_s"]})
    rejected = pd.read_csv(data_dir / "rejected.csv") if (data_dir / "rejected.csv").exists() else pd.DataFrame()
    return {"params": params, "dataset": dataset, "splits": splits, "meta": meta, "methods": methods,
            "history": history, "finetune": ft, "stage_costs": stage_costs, "rejected": rejected}


def galleries(info: dict[str, Any], root: Path) -> dict[str, list[dict[str, Any]]]:
    """Wrong predictions per method, most confident mistakes first, and the test images on which the two
    methods disagree; each capped at GALLERY_CAP."""
    out: dict[str, list[dict[str, Any]]] = {}
    methods = info["methods"]
    for m, data in methods.items():
        if data["ran"]:
            wrong = data["predictions"][~data["predictions"]["correct"]].sort_values("confidence", ascending=False)
            out[m] = [{**row, "thumb": _thumb(root / row["id"])} for row in wrong.head(GALLERY_CAP).to_dict("records")]
    if all(d["ran"] for d in methods.values()):
        a, b = methods["probe"]["predictions"], methods["finetune"]["predictions"]
        both = a.merge(b, on=["id", "actual"], suffixes=("_probe", "_finetune"))
        differ = both[both["predicted_probe"] != both["predicted_finetune"]]
        out["disagree"] = [{**row, "thumb": _thumb(root / row["id"])}
                           for row in differ.head(GALLERY_CAP).to_dict("records")]
        out["disagree_total"] = len(differ)
    return out


def render(params: dict[str, Any], data_dir: Path, results: Path, template_dir: Path, out: Path,
           figures_dir: Path) -> Path:
    """Write the self-contained report (images embedded as data URIs) and the figures as PNG files."""
    info = gather(params, data_dir, results)
    ran = [m for m, d in info["methods"].items() if d["ran"]]
    if not ran:
        raise ValueError("report: no evaluated method found under results/metrics (run evaluate first)")
    figures = {
        "confusion": confusion_figure(info["methods"], figures_dir / "confusion.png"),
        "per_class": per_class_figure(info["methods"], figures_dir / "per_class.png"),
        "learning": learning_figure(info["history"], figures_dir / "learning_curves.png"),
        "reliability": reliability_figure(info["methods"], figures_dir / "reliability.png"),
    }
    env = Environment(loader=FileSystemLoader(template_dir), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        info=info, methods=METHODS, table=comparison(info["methods"]), figures=figures,
        galleries=galleries(info, Path(info["dataset"]["root"])), differences=params_mod.differences(params),
        commit=git_commit(), date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        versions=versions(), visualize=visualizations(results), curve=learning_curve(results),
        rejected_reasons=info["dataset"]["left_out_reasons"], cap=GALLERY_CAP)
    with atomic_path(out) as tmp:
        tmp.write_text(html)
    return out
