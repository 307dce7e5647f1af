"""Stage sweep_extract: one backbone's features of every image, shared by all the sweep's points."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("sweep_extract")
