"""Stage report: the self-contained HTML report and its figures."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("report")
