"""Stage evaluate: test metrics, per-class table, confusion matrix and predictions of one method."""
from pathlib import Path

from transferlab import evaluation, features, head
from transferlab.cli import log, run_stage
from transferlab.split import SPLITS


def probe_outputs():
    """Probabilities of the linear probe on the cached (un-augmented) features of each split."""
    model, class_names = head.load("results/head/model.npz")
    proba, labels = {}, {}
    for split in SPLITS:
        cached = features.load(Path("results/features") / f"{split}.npz")
        plain = cached["views"] == 0
        proba[split] = head.predict_proba(model, cached["features"][plain], len(class_names))
        labels[split] = cached["labels"][plain]
        ids = cached["ids"][plain]
    return proba, labels, ids, class_names


def main(params, args) -> None:
    proba, labels, ids, class_names = probe_outputs()
    result = evaluation.evaluate(args.method, proba, labels, ids, class_names, Path("results/metrics"),
                                 Path("results/eval"))
    log.info("%s: %s", args.method, {k: v for k, v in result.items() if k != "method"})


if __name__ == "__main__":
    run_stage("evaluate", main, extra=lambda p: p.add_argument("--method", choices=["probe"], default="probe"))
