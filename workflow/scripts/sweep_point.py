"""Stage sweep_point: probe and fine-tune on one training-set fraction → results/sweep/<b>/<fraction>/<seed>/."""
from pathlib import Path

from transferlab import layout, sweep
from transferlab.atomic import write_json
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    out = Path(args.out or layout.point_dir(Path("results"), args.backbone, args.fraction, args.seed))
    if not params["sweep"]["enabled"]:
        write_json(out / "metrics.json", {"skipped": True, "reason": "sweep.enabled: false"})
        return
    features_dir = layout.features_dir(Path("results"), args.backbone)
    log.info("%s fraction %s seed %d: cached features from %s (no extraction here)", args.backbone, args.fraction,
             args.seed, features_dir)
    result = sweep.run_point(params, args.backbone, args.fraction, args.seed, Path("data"), features_dir, out)
    log.info("%d training images (%.1f per class): probe accuracy %.4f%s", result["train_images"],
             result["images_per_class"], result["probe"]["accuracy"],
             f", fine-tune {result['finetune']['accuracy']:.4f}" if result["finetune"] else "")


def arguments(parser) -> None:
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--fraction", type=float, required=True, help="of each class's training images")
    parser.add_argument("--seed", type=int, required=True, help="subsample (and fine-tune) seed")
    parser.add_argument("--out", help="output folder (default: results/sweep/<backbone>/<fraction>/<seed>)")


if __name__ == "__main__":
    run_stage("sweep_point", main, arguments)
