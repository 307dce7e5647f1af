"""Stage split: stratified, seeded train/val/test lists."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("split")
