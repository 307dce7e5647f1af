"""Stage finetune: backbone + probe head as one network, the last blocks unfrozen and trained."""
from transferlab.cli import run_stage

if __name__ == "__main__":
    run_stage("finetune")
