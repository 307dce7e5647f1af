"""Stage evaluate_probe: test metrics, per-class table, confusion matrix and predictions of the linear probe."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("evaluate_probe")
