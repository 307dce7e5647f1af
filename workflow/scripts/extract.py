"""Stage extract: frozen backbone features per split → results/features/{train,val,test}.npz + meta.json."""
from pathlib import Path

from transferlab import features
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    meta = features.run(params, Path("data"), Path("results/features"))
    for split, stats in meta["splits"].items():
        log.info("%s: %d images in %.1f s (%.1f img/s), %d features", split, stats["images"], stats["seconds"],
                 stats["images_per_s"] or 0, meta["feature_dim"])


if __name__ == "__main__":
    run_stage("extract", main)
