"""Stage sweep_aggregate: the learning curve from every sweep point."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("sweep_aggregate")
