"""The learning-curve sweep: frozen features + head vs fine-tuning across training-set sizes and backbones.

Features are extracted once per backbone over every image of the split (results/sweep/<backbone>/features);
each point (backbone, fraction, seed) takes a seeded per-class subsample of the training list, selects its rows
from that cache, fits the head, and fine-tunes from it. Val and test sets are the same for every point, so the
curve compares like with like. Points are independent: the engines run them in parallel and re-run only new ones.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import features, finetune, head  # noqa: E402
from .atomic import atomic_path, write_csv, write_json  # noqa: E402
from .evaluation import scores  # noqa: E402
from .split import SPLITS, subsample  # noqa: E402

METHODS = ("probe", "finetune")
# Fine-tuning "pays off" where it beats the probe by more than this (accuracy, on the same test images).
PAYS_OFF = 0.01


def label(value: float) -> str:
    """A fraction as it appears in paths and stage names (0.1, 0.25, 1.0)."""
    return str(float(value))


def features_dir(results: Path, backbone: str) -> Path:
    """Where the backbone's features for the whole sweep are cached."""
    return results / "sweep" / backbone / "features"


def point_dir(results: Path, backbone: str, fraction: float, seed: int) -> Path:
    return results / "sweep" / backbone / label(fraction) / str(seed)


def points(params: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Every (backbone, fraction, seed) of the grid."""
    sw = params["sweep"]
    return [(b, float(f), int(s)) for b in sw["backbones"] for f in sw["fractions"] for s in sw["seeds"]]


def metric_files(params: dict[str, Any], results: Path) -> list[Path]:
    """The metrics.json of every grid point, however the engine spelled its fraction folder (0.5, 1 or 1.0)."""
    wanted = set(points(params))
    found = {}
    for path in sorted(results.glob("sweep/*/*/*/metrics.json")):
        backbone, fraction, seed = path.parts[-4:-1]
        try:
            key = (backbone, float(fraction), int(seed))
        except ValueError:
            continue
        if key in wanted:
            found[key] = path
    missing = sorted(wanted - set(found))
    if missing:
        raise FileNotFoundError(f"sweep points without results (run them first): {missing}")
    return [found[key] for key in sorted(found)]


def with_backbone(params: dict[str, Any], backbone: str) -> dict[str, Any]:
    """params for one backbone: model.weights/checkpoint where it is model.backbone, else its DEFAULT weights."""
    out = copy.deepcopy(params)
    if backbone != params["model"]["backbone"]:
        out["model"].update(backbone=backbone, weights="DEFAULT", checkpoint=None)
    return out


def extract(params: dict[str, Any], backbone: str, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The backbone's features for every image of data/splits (the sweep's only extraction for it)."""
    return features.run(with_backbone(params, backbone), data_dir, out_dir)


def _rows(cached: dict[str, np.ndarray], ids: set[str]) -> dict[str, np.ndarray]:
    keep = np.isin(cached["ids"], list(ids))
    return {k: (v[keep] if k != "classes" else v) for k, v in cached.items()}


def run_point(params: dict[str, Any], backbone: str, fraction: float, seed: int, data_dir: Path, features_dir: Path,
              out_dir: Path) -> dict[str, Any]:
    """Fit the head on the point's subsample of cached features, then fine-tune from it; write out_dir/metrics.json."""
    params = with_backbone(params, backbone)
    frames = {s: pd.read_csv(data_dir / "splits" / f"{s}.csv") for s in SPLITS}
    frames["train"] = subsample(frames["train"], fraction, seed)
    point_data = out_dir / "data"
    (point_data / "splits").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "dataset.json", point_data / "dataset.json")
    for split, frame in frames.items():
        write_csv(point_data / "splits" / f"{split}.csv", frame)

    cached = {s: _rows(features.load(features_dir / f"{s}.npz"), set(frames[s]["path"])) for s in SPLITS}
    classes = [str(c) for c in cached["train"]["classes"]]
    start = time.perf_counter()
    model, search = head.fit(cached["train"], cached["val"], params["head"])
    head.save(model, out_dir / "head.npz", classes)
    test = cached["test"]
    probe = {**scores(test["labels"], head.predict_proba(model, test["features"], len(classes))),
             "seconds": round(time.perf_counter() - start, 3),
             "C": float(search.loc[search["chosen"], "C"].iloc[0])}
    result: dict[str, Any] = {
        "backbone": backbone, "fraction": fraction, "seed": seed, "train_images": len(frames["train"]),
        "images_per_class": round(len(frames["train"]) / len(classes), 2), "test_images": int(len(test["labels"])),
        "features": str(features_dir), "probe": probe, "finetune": None,
    }
    if params["finetune"]["enabled"]:
        params["finetune"]["seed"] = seed
        summary = finetune.train(params, point_data, out_dir / "head.npz", out_dir / "finetune")
        net = finetune.load(params["model"], out_dir / "finetune" / "model.pt", len(classes))
        proba, labels = finetune.predict(net, frames["test"], Path(json.loads(
            (data_dir / "dataset.json").read_text())["root"]), classes, params["model"], params["finetune"]["batch_size"])
        result["finetune"] = {**scores(labels, proba), "seconds": summary["seconds"],
                              "epochs_run": summary["epochs_run"]}
    write_json(out_dir / "metrics.json", result)
    return result


def table(metrics: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per point and method: backbone, fraction, seed, images per class, test scores."""
    rows = []
    for m in metrics:
        for method in METHODS:
            if m.get(method):
                rows.append({"backbone": m["backbone"], "method": method, "fraction": m["fraction"],
                             "seed": m["seed"], "train_images": m["train_images"],
                             "images_per_class": m["images_per_class"], "accuracy": m[method]["accuracy"],
                             "macro_f1": m[method]["macro_f1"], "log_loss": m[method]["log_loss"],
                             "seconds": m[method]["seconds"]})
    return pd.DataFrame(rows, columns=["backbone", "method", "fraction", "seed", "train_images", "images_per_class",
                                       "accuracy", "macro_f1", "log_loss", "seconds"])


def curve(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max test accuracy over seeds per backbone, method and fraction."""
    grouped = frame.groupby(["backbone", "method", "fraction"], as_index=False)
    return grouped.agg(images_per_class=("images_per_class", "mean"), accuracy=("accuracy", "mean"),
                       accuracy_min=("accuracy", "min"), accuracy_max=("accuracy", "max"), seeds=("seed", "nunique"))


def reading(points_curve: pd.DataFrame) -> str:
    """One paragraph, from the numbers: where fine-tuning starts paying off, if it does."""
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
        gain = (wide["finetune"] - wide["probe"]).dropna()
        paying = gain[gain > PAYS_OFF]
        ends = (f"probe {wide['probe'].iloc[0]:.1%} vs fine-tune {wide['finetune'].iloc[0]:.1%} at "
                f"{per_class.iloc[0]:g} images per class, {wide['probe'].iloc[-1]:.1%} vs "
                f"{wide['finetune'].iloc[-1]:.1%} at {per_class.iloc[-1]:g}")
        if paying.empty:
            sentences.append(f"{backbone}: fine-tuning never beats the frozen features by more than "
                             f"{PAYS_OFF:.0%} ({ends}); with this little data keep the backbone frozen.")
        elif (gain.loc[paying.index[0]:] > PAYS_OFF).all():
            first = paying.index[0]
            below = gain.loc[:first].iloc[:-1]
            before = (f"; below that the frozen features are as good or better (by up to {-below.min():.1%} at "
                      f"{per_class[below.idxmin()]:g} images per class)" if len(below) and below.min() < 0 else "")
            sentences.append(f"{backbone}: fine-tuning starts paying off from {per_class[first]:g} training images "
                             f"per class (+{gain[first]:.1%}){before}; {ends}.")
        else:
            sentences.append(f"{backbone}: fine-tuning beats the probe by more than {PAYS_OFF:.0%} only at "
                             f"{', '.join(f'{per_class[f]:g}' for f in paying.index)} images per class, not "
                             f"consistently ({ends}); differences this small are within seed noise.")
    return " ".join(sentences)


def plot(points_curve: pd.DataFrame, out: Path) -> None:
    """Test accuracy against training images per class, a line per method × backbone, a band over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (backbone, method), group in points_curve.groupby(["backbone", "method"], sort=True):
        group = group.sort_values("images_per_class")
        line, = ax.plot(group["images_per_class"], group["accuracy"], marker="o",
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
    ax.legend()
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


def aggregate(metric_files: list[Path], out_dir: Path) -> dict[str, Any]:
    """Write out_dir/{points.csv, curve.csv, curve.png, metrics.json, summary.json} from the points' metrics."""
    frame = table([json.loads(Path(p).read_text()) for p in metric_files])
    points_curve = curve(frame)
    write_csv(out_dir / "points.csv", frame)
    write_csv(out_dir / "curve.csv", points_curve)
    write_json(out_dir / "metrics.json", metrics(points_curve))
    plot(points_curve, out_dir / "curve.png")
    summary = {"points": len(metric_files), "reading": reading(points_curve)}
    write_json(out_dir / "summary.json", summary)
    return summary
