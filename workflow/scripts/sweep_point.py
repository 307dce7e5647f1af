"""Stage sweep_point: probe and fine-tune on one seeded training-set fraction."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("sweep_point")
