"""Stage split: data/index.csv → data/splits/{train,val,test}.csv (stratified, seeded); first, the params that
name classes are checked against the dataset."""
from pathlib import Path

from transferlab import split
from transferlab.atomic import read_json
from transferlab.cli import log, run_stage
from transferlab.params import check_class_names


def main(params, args) -> None:
    check_class_names(params, read_json("data/dataset.json")["classes"])
    summary = split.run(params["data"], Path("data"))
    log.info("split: %s", {name: part["images"] for name, part in summary.items()})


if __name__ == "__main__":
    run_stage("split", main)
