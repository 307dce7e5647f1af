"""Stage split: data/index.csv → data/splits/{train,val,test}.csv (stratified, seeded)."""
from pathlib import Path

from transferlab import split
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    summary = split.run(params["data"], Path("data"))
    log.info("split: %s", {name: part["images"] for name, part in summary.items()})


if __name__ == "__main__":
    run_stage("split", main)
