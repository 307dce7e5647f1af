"""Stage visualize: ideal class image, adversarial examples and feature maps → results/visualize/."""
from pathlib import Path

from transferlab import visualize
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    summary = visualize.run(params, Path("data"), Path("results"), Path("results/visualize"))
    log.info("visualize: %s", {k: v for k, v in summary.items() if k != "adversarial"})


if __name__ == "__main__":
    run_stage("visualize", main)
