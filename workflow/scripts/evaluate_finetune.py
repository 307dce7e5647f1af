"""Stage evaluate_finetune: test metrics, per-class table, confusion matrix and predictions of the fine-tuned network."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("evaluate_finetune")
