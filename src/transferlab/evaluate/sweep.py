"""The learning-curve sweep: frozen features + head vs fine-tuning across training-set sizes and backbones.

Features are extracted once per backbone over every image of the split (results/sweep/<backbone>/features);
each point (backbone, fraction, seed) takes a seeded per-class subsample of the training list, selects its rows
from that cache, fits the head, and fine-tunes from it; the point that is the main pipeline's own run reads its
results instead of repeating them. Val and test sets are the same for every point, so the
curve compares like with like. Points are independent: the engines run them in parallel and re-run only new ones.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from transferlab.core.atomic import atomic_path, copy_file, read_arrays, read_json, read_splits, write_csv, write_json
from transferlab.core.errors import UserError
from transferlab.data.split import subsample
from transferlab.evaluate import stats
from transferlab.evaluate.evaluation import scored, scored_part, versus
from transferlab.pipeline import layout
from transferlab.pipeline.layout import METHODS, SPLITS, data_root, points
from transferlab.pipeline.stages import StageIO, made_from, params_for
from transferlab.settings import grid

log = logging.getLogger("transferlab")


def metric_files(params: dict[str, Any], sweep_dir: Path) -> list[Path]:
    """The metrics file of every grid point under the sweep folder, however the engine spelled its fraction
    (0.5, 1 or 1.0)."""
    wanted = set(points(params))
    template = Path(layout.FILES["sweep_point"]["metrics"]).relative_to(layout.SWEEP)
    found = {}
    paths = [p for b in params["sweep"]["backbones"]
             for p in sorted(sweep_dir.glob(str(template).format(backbone=b, fraction="*", seed="*")))]
    for path in paths:  # a backbone's name may hold a slash (timm/...): fraction and seed are the last folders
        parts = path.relative_to(sweep_dir).parts
        backbone, fraction, seed = "/".join(parts[:-3]), parts[-3], parts[-2]
        try:
            key = (backbone, float(fraction), int(seed))
        except ValueError:
            continue
        if key in wanted:
            found[key] = path
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(f"sweep points without results (run them first): {missing}")
    return [found[key] for key in sorted(found)]


def with_backbone(params: dict[str, Any], backbone: str) -> dict[str, Any]:
    """params for one backbone: model.weights/checkpoint where it is model.backbone, else its sweep.checkpoints
    file or its DEFAULT weights."""
    out = copy.deepcopy(params)
    if backbone != params["model"]["backbone"]:
        out["model"].update(backbone=backbone, weights="DEFAULT", checkpoint=params["sweep"]["checkpoints"].get(backbone))
    return out


def extract(params: dict[str, Any], io: StageIO) -> dict[str, Any]:
    """The sweep_extract stage: the backbone's features for every image of the split, extracted once for the
    whole sweep; model.backbone's are the extract stage's own files, copied (not extracted twice)."""
    backbone = io.wildcards["backbone"]
    if backbone == params["model"]["backbone"]:
        for name, path in vars(io.output).items():
            if name != "checksums":  # the stage runner records the copies' own
                copy_file(getattr(io.input.main, name), path)
        log.info("%s is model.backbone: the extract stage's features, copied", backbone)
        return read_json(io.output.meta)
    from transferlab.probe import features

    meta = features.run(with_backbone(params, backbone), io)
    log.info("%s: extracted once for the whole sweep: %d images, %s engine, %d features", backbone,
             sum(s["images"] for s in meta["splits"].values()), meta["engine"], meta["feature_dim"])
    return meta


def _point_finetune(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """A sweep point's fine-tune settings: the finetune section with the point's seed."""
    return {**params["finetune"], "seed": seed}


def frozen_cache(params: dict[str, Any], io: StageIO) -> dict[str, Any]:
    """The sweep_frozen stage: the frozen-prefix cache of one (backbone, seed) over the full splits, shared by
    every fraction; where it is the main fine-tune's own cache (same backbone and seed), that one, copied."""
    from transferlab.finetuning import frozen

    w = io.wildcards
    folder = io.output.meta.parent
    if not params["finetune"]["enabled"]:
        frozen.clear(folder)
        record = {"cached": False, "reason": "finetune.enabled: false"}
        write_json(io.output.meta, record)
        return record
    point = with_backbone(params, w["backbone"])
    ft = _point_finetune(params, int(w["seed"]))
    frames = read_splits(io.input.splits)
    main = read_json(io.input.main)
    if main.get("cached") and main["key"] == json.loads(json.dumps(frozen.key(point["model"], ft, frames))):
        frozen.copy(io.input.main.parent, folder)
        log.info("%s seed %s: the main fine-tune's frozen-prefix cache, copied", w["backbone"], w["seed"])
        return main
    return frozen.build(point, ft, read_json(io.input.dataset), frames, folder, frozen.parts(ft, frozen.SWEEP_PARTS))


def _rows(cached: dict[str, np.ndarray], ids: set[str]) -> dict[str, np.ndarray]:
    keep = np.isin(cached["ids"], list(ids))
    return {k: (v[keep] if k != "classes" else v) for k, v in cached.items()}


def is_main(params: dict[str, Any], backbone: str, fraction: float, seed: int) -> bool:
    """Whether a point is the main pipeline's own run: model.backbone, every training image and (where it
    fine-tunes) finetune.seed; its head and fine-tune are then the main ones to the digit."""
    return (backbone == params["model"]["backbone"] and fraction >= 1
            and (not params["finetune"]["enabled"] or seed == params["finetune"]["seed"]))


def run(params: dict[str, Any], io: StageIO) -> dict[str, Any]:
    """The sweep_point stage: one (backbone, fraction, seed) of the learning curve."""
    w = io.wildcards
    backbone, fraction, seed = w["backbone"], float(w["fraction"]), int(w["seed"])
    dataset, frames = read_json(io.input.dataset), read_splits(io.input.splits)
    if is_main(params, backbone, fraction, seed):
        log.info("%s fraction %s seed %s is the main pipeline's run (model.backbone, all training images, "
                 "finetune.seed): its results, read from train_head, evaluate_probe, finetune and evaluate_finetune",
                 backbone, w["fraction"], seed)
        result = from_main(params, seed, dataset, frames, io.input)
    else:
        log.info("%s fraction %s seed %s: cached features from %s (no extraction here)", backbone, w["fraction"],
                 seed, io.input.features.meta.parent)
        result = run_point(params, backbone, fraction, seed, dataset, frames, io.input.features,
                           io.input.frozen.parent)
    write_json(io.output.metrics, result)
    log.info("%d training images (%.1f per class): probe accuracy %.4f%s", result["train_images"],
             result["images_per_class"], result["probe"]["accuracy"],
             f", fine-tune {result['finetune']['accuracy']:.4f}" if result["finetune"] else "")
    return result


def _point(params: dict[str, Any], backbone: str, fraction: float, seed: int, dataset: dict[str, Any],
           train_images: int, test_images: int, features_folder: Path) -> dict[str, Any]:
    """A point's metrics record without its scores."""
    return {"backbone": backbone, "fraction": fraction, "seed": seed, "train_images": train_images,
            "images_per_class": round(train_images / len(dataset["classes"]), 2), "test_images": test_images,
            "features": str(features_folder), "made_from": made_from(params, "sweep_point", dataset),
            "confidence": params["evaluate"]["confidence"], "probe": None, "finetune": None}


def from_main(params: dict[str, Any], seed: int, dataset: dict[str, Any], frames: dict[str, pd.DataFrame],
              main: SimpleNamespace) -> dict[str, Any]:
    """The main point's metrics from the main pipeline's outputs (`main`: the sweep_point stage's inputs)."""
    probe, head_summary = read_json(main.main_probe), read_json(main.main_head)
    result = _point(params, params["model"]["backbone"], 1.0, seed, dataset, len(frames["train"]),
                    probe["test_images"], main.features.meta.parent)
    result["probe"] = {**scored_part(probe), "seconds": head_summary["seconds"], "C": head_summary["C"]}
    if params["finetune"]["enabled"]:
        tuned, summary = read_json(main.main_evaluation), read_json(main.main_finetune)
        result["finetune"] = {**scored_part(tuned), **_tuning(summary)}
        result["vs_probe"] = tuned["vs_probe"]
    return result


def _tuning(summary: dict[str, Any]) -> dict[str, Any]:
    """What a point records of its fine-tune: cost, epochs, the setting its validation search chose (`setting`:
    in words, "the start" where no candidate beat it)."""
    setting = (f"{summary['augment']}, {grid.blocks(summary['unfreeze'])}, lr {summary['lr']:g}, α {summary['alpha']:g}"
               if summary["improved"] else "the start (no candidate beat it)")
    return {**{k: summary[k] for k in ("seconds", "epochs_run", "from_cache", "lr", "head_lr", "weight_decay",
                                       "candidates", "improved")}, "setting": setting}


def run_point(params: dict[str, Any], backbone: str, fraction: float, seed: int, dataset: dict[str, Any],
              frames: dict[str, pd.DataFrame], cache: SimpleNamespace, frozen_folder: Path) -> dict[str, Any]:
    """Fit the head on the point's subsample of the cached features, then fine-tune from it (from the
    (backbone, seed) frozen-prefix cache in `frozen_folder` where there is one); the point's metrics."""
    from transferlab.finetuning import finetune, frozen
    from transferlab.probe import head

    params = with_backbone(params, backbone)
    full = frames
    frames = {**frames, "train": subsample(frames["train"], fraction, seed)}
    cached = {s: _rows(read_arrays(getattr(cache, s)), set(frames[s]["path"])) for s in SPLITS}
    classes = [str(c) for c in cached["train"]["classes"]]
    settings = params["evaluate"]
    start = time.perf_counter()
    model, search = head.fit(cached["train"], cached["val"], params["head"])
    test = cached["test"]
    proba = head.predict_proba(model, test["features"], len(classes))
    predicted = proba.argmax(1)
    result = _point(params, backbone, fraction, seed, dataset, len(frames["train"]), int(len(test["labels"])),
                    cache.meta.parent)
    result["probe"] = {**scored(test["labels"], proba, settings), "seconds": round(time.perf_counter() - start, 3),
                       "C": head.chosen_C(search)}
    if params["finetune"]["enabled"]:
        ft = _point_finetune(params, seed)
        root = data_root(dataset)
        views = frozen.Cache.open(frozen_folder, params["model"], ft, full, classes)
        tuned = finetune.tune(params["model"], ft, head.as_linear(model), root, frames, classes, views,
                              frozen.rows_of(full["train"], frames["train"]))
        summary = tuned.summary
        predict = finetune.predictor(tuned.net, params["model"], root, classes, ft["batch_size"], views)
        proba, labels = predict("test", frames["test"])
        result["finetune"] = {**scored(labels, proba, settings), **_tuning(summary)}
        baseline = pd.DataFrame({"id": test["ids"], "correct": predicted == test["labels"]})
        result["vs_probe"] = versus(baseline, "finetune", frames["test"]["path"].to_numpy(), proba.argmax(1) == labels,
                                    settings)
    return result


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
        ft = group[group["method"] == "finetune"].sort_values("fraction")
        by = {v: ft[ft["verdict"] == v] for v in ("finetune", "probe", "within")}
        parts = []
        for who, text in (("finetune", "fine-tuning leads by more than its uncertainty at"),
                          ("probe", "the frozen features lead by more than the uncertainty at")):
            if len(by[who]):
                parts.append(f"{text} {_points(by[who]['images_per_class'].tolist())} ("
                             + "; ".join(_gain(r) for r in by[who].itertuples()) + ")")
        if len(by["within"]):
            parts.append(f"at {_points(by['within']['images_per_class'].tolist())} the difference is within the "
                         f"uncertainty of {int(ft['test_images'].iloc[0])} test images ("
                         + "; ".join(_gain(r) for r in by["within"].itertuples()) + ")")
        verdicts = ft["verdict"].tolist()
        first = verdicts.index("finetune") if "finetune" in verdicts else None
        if first is None:
            advice = ("nowhere does fine-tuning beat the frozen features by more than the test set can tell: keep "
                      "the backbone frozen at these sizes, or measure on more test images")
        elif all(v == "finetune" for v in verdicts[first:]):
            advice = f"fine-tuning pays off from {ft['images_per_class'].iloc[first]:g} training images per class on"
        else:
            advice = "fine-tuning's lead is not consistent across sizes: treat it as noise"
        rates = ", ".join(f"{r.chosen} at {r.images_per_class:g}" for r in ft.itertuples())
        tuned = (f"The fine-tune's setting chosen on validation (of {ft['candidates'].max():g} candidates) at "
                 f"each size: {rates} images per class" if ft["candidates"].max() > 1 else
                 f"Every size fine-tunes at the one setting: {ft['chosen'].iloc[0]}")
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


def aggregate(params: dict[str, Any], io: StageIO) -> dict[str, Any]:
    """The sweep_aggregate stage: the points table, the curve, its plot, metrics and a summary from every point."""
    files = metric_files(params, io.input.points)
    point_metrics = [read_json(p) for p in files]
    sources = {json.dumps({k: v for k, v in m["made_from"].items() if k != "params"}, sort_keys=True)
               for m in point_metrics}
    if len(sources) != 1:
        raise UserError("sweep_aggregate: the sweep points were made from different datasets; re-run sweep_point")
    confidence = point_metrics[0]["confidence"]
    frame = table(point_metrics)
    points_curve = curve(frame)
    out = io.output
    write_csv(out.points, frame)
    write_csv(out.curve, points_curve)
    write_json(out.metrics, metrics(points_curve))
    plot(points_curve, out.plot, confidence)
    summary = {"points": len(files), "reading": reading(points_curve), "confidence": confidence,
               "made_from": {**json.loads(sources.pop()), "params": params_for(params, "sweep_aggregate")}}
    write_json(out.summary, summary)
    log.info("%d points: %s", summary["points"], summary["reading"])
    return summary
