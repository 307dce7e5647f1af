"""Stage download: dataset → data/index.csv (validated images), data/rejected.csv, data/dataset.json."""
from pathlib import Path

from transferlab import index
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    summary = index.build(params["data"], Path("data"), workers=args.threads)
    log.info("%d images in %d classes; %d files left out %s", summary["images"], len(summary["classes"]),
             summary["left_out"], summary["left_out_reasons"])


if __name__ == "__main__":
    run_stage("download", main)
