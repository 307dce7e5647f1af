"""Stage report: the self-contained HTML report and its figures."""
from transferlab.cli import run_stage

if __name__ == "__main__":
    run_stage("report")
