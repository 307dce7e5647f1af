"""Stage download: the dataset, validated, as an image index and a list of files left out."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("download")
