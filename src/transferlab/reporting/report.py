"""One self-contained HTML page comparing feature extraction with fine-tuning, from the run's records."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import io
import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from transferlab.core import lock
from transferlab.core.atomic import atomic_path, read_json, read_table
from transferlab.core.errors import UserError
from transferlab.core.project import METHOD_NAMES, data_root
from transferlab.data.images import load_rgb
from transferlab.evaluate import diagnosis, stats
from transferlab.finetuning import tuning
from transferlab.reporting.figures import (
    confusion_figure,
    data_uri,
    learning_figure,
    per_class_figure,
    reliability_figure,
    search_figure,
)
from transferlab.settings import grid
from transferlab.settings import params as params_mod
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")
# metric key, label, True when higher is better
ROWS = [("accuracy", "Test accuracy", True), ("tta_accuracy", "Test accuracy with TTA", True),
        ("top5_accuracy", "Top-5 accuracy", True),
        ("balanced_accuracy", "Balanced accuracy", True), ("macro_f1", "Macro F1", True),
        ("log_loss", "Log-loss", False), ("train_val_gap", "Train–val gap (overfitting risk)", False),
        ("trainable_parameters", "Trainable parameters", None), ("learning_rate", "Learning rate", None),
        ("epochs", "Epochs", None), ("seconds", "Wall-clock seconds (extraction counted for both)", False)]
GALLERY_CAP = 24
LIBRARIES = ["torch", "torchvision", "scikit-learn", "numpy", "pandas", "matplotlib", "dvc", "snakemake"]


def _json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def _embed_png(path: Path) -> str:
    return data_uri(path.read_bytes())


def optional_section(params: Params, current: dict[str, Any], section: str, stage: str,
                     summary: dict[str, Any] | None) -> dict[str, Any]:
    """Whether an optional stage's output belongs to this run (`current`: what this run's would be made from):
    shown, or why not (disabled, not run, stale)."""
    if not params.at(f"{section}.enabled"):
        return {"shown": False, "why": f"not run ({section}.enabled: false)"}
    if not summary or summary.get("skipped"):
        return {"shown": False, "why": f"not run yet: run the {stage} stage"}
    if summary.get("made_from") != current:
        return {"shown": False, "why": f"not shown: results of the {stage} stage were made from another dataset or "
                                       f"other params than this run; re-run {stage}"}
    return {"shown": True, "made_from": summary["made_from"]}


def visualizations(params: Params, current: dict[str, Any], files: SimpleNamespace) -> dict[str, Any]:
    """The visualize stage's summary with its PNGs embedded where it belongs to this run (see optional_section)."""
    folder = files.summary.parent
    summary = _json(files.summary)
    state = optional_section(params, current, "visualize", "visualize", summary)
    if not state["shown"]:
        return state
    for item in summary["ideal"].values():
        item["src"] = _embed_png(folder / item["image"])
    for attack in summary["adversarial"]:
        attack["src"] = {kind: _embed_png(folder / name) for kind, name in attack["images"].items()}
    summary["feature_maps"]["src"] = _embed_png(folder / summary["feature_maps"]["figure"])
    return {**summary, **state, "caption": ideal_caption(summary)}


def ideal_caption(summary: dict[str, Any]) -> str:
    """What the ideal images show and why they look as they do, with their numbers."""
    smooth, raw = summary["ideal"]["with_tv"], summary["ideal"]["without_tv"]
    gap = raw["robust_probability"] - smooth["robust_probability"]
    score = "a higher" if gap > 1e-3 else ("a lower" if gap < -1e-3 else "the same")
    top = smooth["imagenet_top5"]
    seen = (f" The ImageNet classifier, which never saw this dataset, calls the smooth image "
            f"“{top[0]['class']}” ({top[0]['probability']:.2f}), then "
            + ", ".join(f"“{c['class']}”" for c in top[1:]) + "." if top else "")
    return (f"Each picture is the input the {summary['model']} scores as “{summary['target_class']}”: found by "
            f"gradient ascent on the pixels from seeded noise, scored over random crops, flips and rescales at each "
            f"step so that it holds features the network recognises from any framing, not a pixel pattern that works "
            f"for one. Over {summary['robust_views']} other such views p = {smooth['robust_probability']:.3f} with the "
            f"smoothness term and {raw['robust_probability']:.3f} without.{seen} It is not a photo of the class: the "
            f"network rewards local evidence (textures and parts it learned for the class) wherever it appears, so "
            f"the optimiser repeats such motifs across the frame instead of composing one animal or object. Without "
            f"the total-variation term it reaches {score} score with high-frequency detail (total variation "
            f"{raw['total_variation']:.3f} vs {smooth['total_variation']:.3f}): the sensitivity that the adversarial "
            f"examples below exploit.")


def learning_curve(params: Params, current: dict[str, Any], files: SimpleNamespace) -> dict[str, Any]:
    """The sweep's curve (figure embedded, table, generated reading) where it belongs to this run."""
    summary = _json(files.summary)
    state = optional_section(params, current, "sweep", "sweep_aggregate", summary)
    if not state["shown"]:
        return state
    table = pd.read_csv(files.curve).sort_values(["backbone", "fraction", "method"])
    return {**summary, **state, "src": _embed_png(files.plot), "rows": table.to_dict("records")}


def _thumb(path: Path, size: int = 112) -> str:
    try:
        image = load_rgb(path, size)
    except OSError:
        return ""
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=80)
    return data_uri(buf.getvalue(), "image/jpeg")


def versions(lock_file: Path) -> dict[str, str]:
    """The main libraries' versions, and the lock they were installed from (its sha256, and any that differ)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    differ = lock.unlike_installed(lock_file) if lock_file.exists() else []
    out[lock.NAME] = f"sha256 {lock.digest(lock_file)}" + (
        f", but {len(differ)} installed at other versions ({', '.join(differ[:3])})" if differ else "")
    return out


def git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (result.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")) or "unknown"


def comparison(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: one value per method (with its interval where there is one), the better one marked
    where that has a meaning."""
    rows = []
    for key, label, higher in ROWS:
        values = {m: info["row"].get(key) for m, info in methods.items()}
        intervals = {m: info["row"].get("interval", {}).get(key) for m, info in methods.items()}
        present = {m: v for m, v in values.items() if isinstance(v, (int, float))}
        best = None
        if higher is not None and len(present) == 2 and len(set(present.values())) == 2:
            best = (max if higher else min)(present, key=present.get)
        rows.append({"key": key, "label": label, "values": values, "intervals": intervals, "best": best})
    return rows


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.2g}"


def verdict(probe: dict[str, Any], finetune: dict[str, Any] | None, cost_ratio: float | None,
            confidence: float, found: list[diagnosis.Finding] | tuple = ()) -> str:
    """The answer to "freeze or fine-tune, for this much data?" in a few sentences, from the metrics: the paired
    difference, its interval, McNemar's p-value and the cost ratio; then what the fine-tune's records show
    (`found`: diagnosis.findings), from which the advice is derived. `finetune` is None where it did not run."""
    level = f"{confidence:.0%}"
    if finetune is None:
        low, high = (probe["interval"]["accuracy"][k] for k in ("low", "high"))
        return (f"Only the frozen features + linear head ran: test accuracy {probe['accuracy']:.1%} ({level} "
                f"interval {low:.1%} to {high:.1%} on {probe['test_images']} test images). Enable finetune to "
                f"learn whether fine-tuning pays off for this data.")
    pair = finetune["vs_probe"]
    gap, n = pair["difference"] * 100, pair["test_images"]
    numbers = (f"{finetune['accuracy']:.1%} vs {probe['accuracy']:.1%}; {level} interval of the difference "
               f"{pair['low'] * 100:+.1f} to {pair['high'] * 100:+.1f} points, McNemar {_p(pair['mcnemar_p'])}")
    cost = f"{cost_ratio:.1f}× the compute of the frozen features" if cost_ratio else "more compute"
    why = (" What the runs show: " + "; ".join(f.text for f in found) + ".") if found else ""
    if stats.clear(pair, confidence) and gap > 0:
        return (f"Fine-tuning is {gap:.1f} points ahead of the frozen features ({numbers}), more than the "
                f"uncertainty of {n} test images; it costs {cost}. For this data the fine-tuned model is the better "
                f"choice.{why}")
    if stats.clear(pair, confidence):
        return (f"The frozen features are {-gap:.1f} points ahead of fine-tuning ({numbers}), more than the "
                f"uncertainty of {n} test images, although fine-tuning costs {cost}.{why} "
                + diagnosis.advice(list(found), "Keep the backbone frozen."))
    if gap == 0:
        return (f"Fine-tuning and the frozen features get the same test accuracy on {n} test images ({numbers}); "
                f"fine-tuning costs {cost}.{why} Keep the frozen features.")
    leader = "Fine-tuning is" if gap > 0 else "The frozen features are"
    needed = stats.images_needed(pair, confidence)
    more = (f": about {needed:,} would tell a {abs(gap):.1f}-point difference apart at this rate of disagreement"
            if needed else "")
    return (f"{leader} {abs(gap):.1f} points ahead, within the uncertainty of {n} test images ({numbers}); "
            f"fine-tuning costs {cost}.{why} With this much data keep the frozen features, or collect more test "
            f"images{more}.")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def shown_differences(params: Params) -> dict[str, tuple[Any, Any]]:
    """Params that differ from the defaults, leaving out the keys of disabled stages (but their `enabled`)."""
    def disabled(key: str) -> bool:
        section = getattr(params, key.split(".")[0])
        return getattr(section, "enabled", True) is False and not key.endswith(".enabled")

    return {k: v for k, v in params_mod.differences(params).items() if not disabled(k)}


def _load_method(files: SimpleNamespace, extra: dict[str, Any]) -> dict[str, Any]:
    metrics = _json(files.metrics)
    ran = bool(metrics) and not metrics.get("skipped")
    info: dict[str, Any] = {"ran": ran, "metrics": metrics or {}, "row": {}}
    if not ran:
        return info
    info["predictions"] = read_table(files.predictions)
    info["per_class"] = read_table(files.per_class)
    info["confusion"] = read_table(files.confusion, index_col="actual")
    info["row"] = {**metrics, **extra, **tta_row(metrics)}
    return info


def tta_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The TTA accuracy and its interval as comparison-table entries, or why there is none."""
    tta = metrics.get("tta")
    if tta is None:
        why = "— (cached test features: one view)" if metrics["method"] == "probe" else "— (evaluate.tta: false)"
        return {"tta_accuracy": why}
    return {"tta_accuracy": tta["accuracy"],
            "interval": {**metrics["interval"], "tta_accuracy": tta["interval"]["accuracy"]}}


def gather(params: Params, files: SimpleNamespace) -> dict[str, Any]:
    """Everything the page shows, read from the stage outputs that exist (`files`: the report stage's inputs)."""
    dataset = _json(files.dataset)
    splits = _json(files.splits)
    meta = _json(files.meta)
    head_summary = _json(files.head) or {}
    tuned = _json(files.finetune.summary) or {"skipped": True, "reason": "finetune stage not run"}
    extract_seconds = sum(s["seconds"] for s in meta["splits"].values())
    probe_extra = {"trainable_parameters": head_summary.get("trainable_parameters"), "learning_rate": "lbfgs (C = "
                   f"{head_summary.get('C')}, chosen on validation)", "epochs": "—",
                   "seconds": round(extract_seconds + head_summary.get("seconds", 0), 1)}
    methods = {"probe": _load_method(files.probe, probe_extra)}
    tuned_extra = {}
    if not tuned.get("skipped"):
        tuned_extra = {"trainable_parameters": tuned["trainable_parameters"], "learning_rate":
                    f"{tuned['lr']:g} (head {tuned['head_lr']:g})"
                    + (f", chosen on validation of {tuned['candidates']}" if tuned["candidates"] > 1 else ""),
                    "epochs": f"{tuned['epochs_run']} (best {tuned['best_epoch']})",
                    "seconds": round(extract_seconds + head_summary.get("seconds", 0) + tuned["seconds"]
                                     + tuned.get("frozen_cache_seconds", 0), 1)}
    methods["finetune"] = _load_method(files.finetune_eval, tuned_extra)
    history_path = files.finetune.history
    history = pd.read_csv(history_path) if methods["finetune"]["ran"] and history_path.exists() else None
    stage_costs = [{"stage": f"extract ({split})", "images": s["images"], "seconds": s["seconds"],
                    "images_per_s": s["images_per_s"]} for split, s in meta["splits"].items()]
    stage_costs.append({"stage": "train_head (C search + refit)", "images": head_summary.get("train_rows"),
                        "seconds": head_summary.get("seconds"), "images_per_s": None})
    if methods["finetune"]["ran"]:
        if tuned.get("frozen_cache_seconds"):
            stage_costs.append({"stage": "frozen_cache (frozen blocks, once, every epoch's views)", "images": None,
                                "seconds": tuned["frozen_cache_seconds"], "images_per_s": None})
        stage_costs.append({"stage": f"finetune ({tuned['candidates']} candidates; the chosen ran {tuned['epochs_run']} "
                                     f"epochs)", "images": None,
                            "seconds": tuned["seconds"], "images_per_s": tuned["train_images_per_s"]})
    rejected = pd.read_csv(files.rejected) if files.rejected.exists() else pd.DataFrame()
    ran = methods["finetune"]["ran"]
    searched = {"head": pd.read_csv(files.head_search),
                "finetune": pd.read_csv(files.finetune.search) if ran else None,
                "range_test": pd.read_csv(files.finetune.range_test) if ran else None,
                "interpolation": tuned.get("interpolation") if ran else None, "alpha": tuned.get("alpha")}
    found = diagnosis.findings(tuned, searched["finetune"]) if ran else []
    return {"params": params, "dataset": dataset, "splits": splits, "meta": meta, "methods": methods,
            "history": history, "finetune": tuned, "stage_costs": stage_costs, "rejected": rejected,
            "head_summary": head_summary, "searched": searched, "findings": found}


def tuned(info: dict[str, Any]) -> str:
    """How each arm was tuned on the validation split: the values chosen, of how many candidates, and why the
    fine-tune's other augmentations and depths lost (their best validation log-loss)."""
    head_search, tuned = info["searched"]["head"], info["finetune"]
    probe = f"the probe's C = {info['head_summary']['C']:g} (of {len(head_search)} candidates)"
    if tuned.get("skipped"):
        return f"Tuned on the validation split: {probe}."
    chosen = (f"augmentation {tuned['augment']}, {grid.blocks(tuned['unfreeze'])}, lr {tuned['lr']:g} "
              f"(head {tuned['head_lr']:g}, weight decay {tuned['weight_decay']:g}), α {tuned['alpha']:g}")
    if tuned["candidates"] == 1:
        return (f"Tuned on the validation split: {probe}; the fine-tune ran at its one setting, {chosen}, not "
                f"tuned (give finetune.lr, augment or unfreeze a list, or lr auto, for a comparison of two tuned "
                f"arms).")
    pruned = f", {tuned['pruned']} stopped early by the pruner" if tuned.get("pruned") else ""
    if not tuned.get("improved", True):
        return (f"Both arms were tuned on the validation split by the lowest validation log-loss: {probe}; the "
                f"fine-tune kept its start, which none of its {tuned['candidates']} candidates{pruned} beat."
                f"{losers(info['searched']['finetune'])}")
    return (f"Both arms were tuned on the validation split by the lowest validation log-loss: {probe}, the "
            f"fine-tune's {chosen} (of {tuned['candidates']} candidates{pruned}).{losers(info['searched']['finetune'])}")


def losers(search: pd.DataFrame | None) -> str:
    """Per searched augmentation and depth, the best validation log-loss its candidates reached (the chosen
    one marked): why the others lost."""
    if search is None:
        return ""
    scores = tuning.scores(search)
    chosen = scores.loc[tuning.chosen(search)]
    parts = []
    for key, what in (("augment", "augmentation"), ("unfreeze", "depth (blocks)")):
        best = scores.groupby(key, sort=False)["val_log_loss"].min()
        if len(best) > 1:
            parts.append(f"per {what}: " + ", ".join(
                f"{value} {loss:.3f}" + (" (chosen)" if str(value) == str(chosen[key]) else "")
                for value, loss in best.items()))
    return (" Best validation log-loss " + "; ".join(parts) + ".") if parts else ""


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


def headline(info: dict[str, Any], confidence: float) -> tuple[dict[str, Any] | None, float | None, str]:
    """The fine-tune's comparison row (None where it did not run), its cost relative to the probe, the verdict
    (with how each arm was tuned)."""
    methods = info["methods"]
    finetune = methods["finetune"]["row"] if methods["finetune"]["ran"] else None
    cost_ratio = finetune["seconds"] / methods["probe"]["row"]["seconds"] if finetune else None
    said = verdict(methods["probe"]["row"], finetune, cost_ratio, confidence, info["findings"])
    return finetune, cost_ratio, f"{said} {tuned(info)}"


def render(params: Params, files: SimpleNamespace, out: SimpleNamespace, stage_params: dict[str, list[str]],
           current: dict[str, dict[str, Any]]) -> Path:
    """The self-contained page (images embedded as data URIs) and the figures as PNG files (`out`), from the report
    stage's input files; `stage_params`: the params each stage depends on; `current`: what this run's visualize
    and sweep_aggregate outputs would be made from (older ones are not shown)."""
    info = gather(params, files)
    methods = info["methods"]
    if not methods["probe"]["ran"]:
        raise UserError(f"report: no evaluation of the probe in {files.probe.metrics} (run evaluate_probe first)")
    figures = {
        "confusion": confusion_figure(methods, out.confusion),
        "per_class": per_class_figure(methods, out.per_class),
        "learning": learning_figure(info["history"], out.learning),
        "reliability": reliability_figure(methods, out.reliability),
        "search": search_figure(info["searched"], out.search),
    }
    finetune, cost_ratio, said = headline(info, params.evaluate.confidence)
    env = Environment(loader=FileSystemLoader(files.template.parent), autoescape=select_autoescape(["html", "j2"]))
    dataset = info["dataset"]
    html = env.get_template(files.template.name).render(
        info=info, methods=METHOD_NAMES, table=comparison(methods), figures=figures,
        verdict=said,
        pair=finetune["vs_probe"] if finetune else None, confidence=params.evaluate.confidence,
        cost_ratio=cost_ratio, galleries=galleries(info, data_root(dataset)),
        differences=shown_differences(params), stage_params=stage_params, commit=git_commit(),
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), versions=versions(files.lock),
        visualize=visualizations(params, current["visualize"], files.visualize),
        curve=learning_curve(params, current["sweep_aggregate"], files.curve),
        tuned=tuned(info),
        rejected_reasons=dataset["left_out_reasons"], cap=GALLERY_CAP, flatten=flatten)
    with atomic_path(out.html) as tmp:
        tmp.write_text(html)
    log.info("wrote %s", out.html)
    return out.html
