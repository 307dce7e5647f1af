"""Stage report: results/report.html (self-contained) and its figures under results/report/."""
from pathlib import Path

from transferlab import report
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    out = report.render(params, Path("data"), Path("results"), Path("workflow/report"),
                        Path("results/report.html"), Path("results/report"))
    log.info("wrote %s", out)


if __name__ == "__main__":
    run_stage("report", main)
