"""Stage inputs: the dataset's and the checkpoint's content manifests (DVC runs it every time; Snakemake at parse)."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("inputs")
