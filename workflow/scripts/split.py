"""Stage split: stratified, seeded train/val/test lists."""
from transferlab.cli import run_stage

if __name__ == "__main__":
    run_stage("split")
