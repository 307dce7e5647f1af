"""Stage extract: frozen backbone features of every split, cached on disk."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("extract")
