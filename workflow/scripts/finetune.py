"""Stage finetune: backbone + probe head as one network, last blocks unfrozen → results/finetune/."""
from pathlib import Path

from transferlab import finetune
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    summary = finetune.train(params, Path("data"), Path("results/head/model.npz"), Path("results/finetune"))
    log.info("fine-tune: %s", summary)


if __name__ == "__main__":
    run_stage("finetune", main)
