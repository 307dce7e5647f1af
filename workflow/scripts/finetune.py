"""Stage finetune: backbone + probe head as one network, the last blocks unfrozen and trained."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("finetune")
