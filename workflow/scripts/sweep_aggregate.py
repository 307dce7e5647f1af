"""Stage sweep_aggregate: the learning curve → results/curve/ (points, curve, plot, metrics)."""
from pathlib import Path

from transferlab import sweep
from transferlab.atomic import write_json
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    out = Path("results/curve")
    if not params["sweep"]["enabled"]:
        write_json(out / "metrics.json", {})
        write_json(out / "summary.json", {"skipped": True, "reason": "sweep.enabled: false"})
        return
    summary = sweep.aggregate(params, sweep.metric_files(params, Path("results")), out)
    log.info("%d points: %s", summary["points"], summary["reading"])


if __name__ == "__main__":
    run_stage("sweep_aggregate", main)
