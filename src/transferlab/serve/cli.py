"""The `transferlab` console command: `transferlab predict` classifies images with a trained model;
`transferlab compare` compares the runs of several folders."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from transferlab.core.atomic import write_csv
from transferlab.core.errors import UserError
from transferlab.core.project import METHODS, METRICS
from transferlab.pipeline.runner import one_line, set_threads

log = logging.getLogger("transferlab")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="transferlab", description="Use a model trained by the transferlab pipeline.")
    verbs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = verbs.add_parser("predict", help="classify image files or folders (recursive)",
                         description="Classify image files or folders (recursive) with a trained model. Files that "
                                     "are not readable images are listed as skipped, with the reason.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    p.add_argument("--project", type=Path, default=Path("."),
                   help="the project whose pipeline trained the model (default: the current folder)")
    p.add_argument("--model", choices=["best", *METHODS], default=None,
                   help="best (default: the higher validation accuracy), probe or finetune")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="an exported model folder (results/model): needs no project, runs on ONNX Runtime")
    p.add_argument("--top-k", type=int, default=1, help="labels per image, most probable first (default: 1)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the centre crop, its mirror and the four corners")
    p.add_argument("--out", type=Path, default=None, help="write a CSV here instead of a table on stdout")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    c = verbs.add_parser("compare", help="compare DVC experiments and runs on the same test images",
                         description="Compare runs: DVC experiments or git revisions of the project (read from "
                                     "DVC's cache), `workspace`, or folders (a copy of a run's folder with its "
                                     "params.yaml and results/). Rows are the params that changed, runs differing "
                                     "only in a seed pooled; each row against the baseline image by image "
                                     "(McNemar, Holm-adjusted); the best on validation marked.")
    c.add_argument("sources", nargs="*", metavar="EXPERIMENT",
                   help="experiment names, git revisions, `workspace` or folders (default: the workspace and every "
                        "finished experiment of the current commit)")
    c.add_argument("--baseline", default=None,
                   help="the run each row is compared with: a name, or `best` (per arm, the row best on validation); "
                        "default: the first named, else the workspace")
    c.add_argument("--metric", choices=METRICS, default="accuracy",
                   help="the test metric compared (default: accuracy, with McNemar's exact test; the others with a "
                        "paired bootstrap interval and a permutation test)")
    form = c.add_mutually_exclusive_group()
    for flag, what in (("md", "Markdown tables (the default)"), ("csv", "CSV, one line per arm and row"),
                       ("json", "JSON, everything the tables show")):
        form.add_argument(f"--{flag}", dest="form", action="store_const", const=flag, help=what)
    c.add_argument("--html", type=Path, default=None, metavar="PATH",
                   help="also write a page in the report's style: the tables and a figure of each arm")
    c.add_argument("--project", type=Path, default=Path("."), help="the project (default: the current folder)")
    return top


def run_compare(args: argparse.Namespace) -> int:
    from transferlab.evaluate import compare
    from transferlab.pipeline import experiments
    from transferlab.reporting import comparison

    named = args.baseline not in (None, compare.BEST)
    found = experiments.read(args.project, [*([args.baseline] if named else []), *args.sources])
    baseline = args.baseline if named else next(iter(found))
    if len(found) < 2:
        raise UserError(f"{baseline}: one run is nothing to compare; name two or more, or run experiments "
                        f"(dvc exp run -S ...)")
    arms, verdicts = compare.comparisons(found, None if args.baseline == compare.BEST else baseline, args.metric)
    print(comparison.written(arms, verdicts, args.form or "md"), end="")
    if args.html:
        page = comparison.html(arms, verdicts, {name: compare.label(changed)
                                                for name, changed in compare.changed_params(found).items()},
                               args.project, args.html)
        log.info("wrote %s", page)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    if args.model_dir and args.model:
        raise UserError("--model and --model-dir: give one (an exported folder holds one model)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: {args.batch_size} must be at least 1")
    from transferlab.inference.transforms import TTA_VIEWS
    from transferlab.serve import predict  # torch and the models load once the arguments are checked: --help is instant

    set_threads(max(1, args.threads))
    files = predict.find_images(args.paths)
    if args.model_dir:
        clf, why = predict.from_model_dir(args.model_dir)
    else:
        clf, why = predict.from_project(args.project, args.model or "best")
    predict.check_top_k(args.top_k, len(clf.labels))
    log.info("model: %s (%s)%s", clf.method, why, "; TTA over " + ", ".join(TTA_VIEWS) if args.tta else "")
    readable, proba, skipped = predict.classify(clf, files, args.batch_size, args.tta, max(1, args.threads))
    for row in skipped.itertuples():
        print(f"skipped {row.path}: {row.reason}", file=sys.stderr)
    if readable.empty:
        raise UserError(f"no readable image among the {len(files)} files given")
    result = predict.table(readable["path"], proba, clf.labels, args.top_k)
    if args.out:
        write_csv(args.out, result)
        print(f"{len(result)} predictions written to {args.out}; {len(skipped)} files skipped", file=sys.stderr)
    else:
        print(result.to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)  # the libraries' warnings
    log.setLevel(logging.INFO)
    try:
        return run_compare(args) if args.command == "compare" else run_predict(args)
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        print(f"transferlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
