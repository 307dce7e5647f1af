"""Stage sweep_extract: one backbone's features for every image of the split → results/sweep/<backbone>/features/."""
from pathlib import Path

from transferlab import layout, sweep
from transferlab.atomic import write_json
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    out = layout.features_dir(Path("results"), args.backbone)
    if not params["sweep"]["enabled"]:
        write_json(out / "meta.json", {"skipped": True, "reason": "sweep.enabled: false"})
        return
    meta = sweep.extract(params, args.backbone, Path("data"), out)
    images = sum(s["images"] for s in meta["splits"].values())
    log.info("%s: extracted once for the whole sweep: %d images, %s engine, %d features → %s", args.backbone, images,
             meta["engine"], meta["feature_dim"], out)


def arguments(parser) -> None:
    parser.add_argument("--backbone", required=True, help="a torchvision model name from sweep.backbones")


if __name__ == "__main__":
    run_stage("sweep_extract", main, arguments)
