"""Stage train_head: logistic regression on cached features → results/head/{model.npz, search.csv, summary.json}."""
import time
from pathlib import Path

from transferlab import features, head
from transferlab.atomic import write_csv, write_json
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    cache, out = Path("results/features"), Path("results/head")
    train, val = features.load(cache / "train.npz"), features.load(cache / "val.npz")
    start = time.perf_counter()
    model, search = head.fit(train, val, params["head"])
    write_json(out / "summary.json", {"C": float(search.loc[search["chosen"], "C"].iloc[0]),
                                      "seconds": round(time.perf_counter() - start, 3),
                                      "train_rows": int(len(train["labels"])),
                                      "trainable_parameters": head.parameter_count(model)})
    write_csv(out / "search.csv", search)
    head.save(model, out / "model.npz", [str(c) for c in train["classes"]])
    log.info("C search:\n%s", search.to_string(index=False))


if __name__ == "__main__":
    run_stage("train_head", main)
