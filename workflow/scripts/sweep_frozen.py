"""Stage sweep_frozen: one (backbone, seed)'s frozen-prefix cache, shared by all the sweep's fractions."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("sweep_frozen")
