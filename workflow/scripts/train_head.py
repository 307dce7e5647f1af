"""Stage train_head: a logistic-regression head on the cached features, C chosen on val."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("train_head")
