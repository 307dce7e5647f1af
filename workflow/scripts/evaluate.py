"""Stage evaluate: test metrics, per-class table, confusion matrix and predictions of one method."""
from pathlib import Path

import pandas as pd

from transferlab import evaluation, features, finetune, head
from transferlab.atomic import read_json
from transferlab.cli import log, run_stage
from transferlab.split import SPLITS


def probe_outputs(params):
    """Probabilities of the linear probe on the cached (un-augmented) features of each split; no TTA (the cached
    test features hold the centre view only)."""
    model, class_names = head.load("results/head/model.npz")
    proba, labels = {}, {}
    for split in SPLITS:
        cached = features.load(Path("results/features") / f"{split}.npz")
        plain = cached["views"] == 0
        proba[split] = head.predict_proba(model, cached["features"][plain], len(class_names))
        labels[split] = cached["labels"][plain]
        ids = cached["ids"][plain]
    return proba, labels, ids, class_names, None


def finetune_outputs(params):
    """Probabilities of the fine-tuned network on the images of each split, and on the test split with TTA."""
    dataset = read_json(Path("data/dataset.json"))
    classes, root = dataset["classes"], Path(dataset["root"])
    model = finetune.load(params["model"], "results/finetune/model.pt", len(classes))
    ft = params["finetune"]
    proba, labels = {}, {}
    for split in SPLITS:
        frame = pd.read_csv(Path("data/splits") / f"{split}.csv")
        proba[split], labels[split] = finetune.predict(model, frame, root, classes, params["model"], ft["batch_size"])
    tta = None
    if params["evaluate"]["tta"]:
        tta, _ = finetune.predict(model, frame, root, classes, params["model"], ft["batch_size"], tta=True)
    return proba, labels, frame["path"].to_numpy(), classes, tta


def main(params, args) -> None:
    metrics_dir, eval_dir = Path("results/metrics"), Path("results/eval")
    if args.method == "finetune":
        summary = read_json(Path("results/finetune/summary.json"))
        if summary.get("skipped"):
            evaluation.skipped("finetune", summary["reason"], metrics_dir, eval_dir)
            log.info("fine-tune was not run (%s)", summary["reason"])
            return
    outputs = probe_outputs if args.method == "probe" else finetune_outputs
    baseline = None if args.method == "probe" else pd.read_csv(eval_dir / "probe" / "predictions.csv")
    proba, labels, ids, classes, tta = outputs(params)
    result = evaluation.evaluate(args.method, proba, labels, ids, classes, metrics_dir, eval_dir, params["evaluate"],
                                 baseline, tta)
    log.info("%s: %s", args.method, {k: v for k, v in result.items() if k != "method"})


if __name__ == "__main__":
    run_stage("evaluate", main, extra=lambda p: p.add_argument("--method", choices=["probe", "finetune"], required=True))
