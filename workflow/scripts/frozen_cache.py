"""Stage frozen_cache: the fine-tune's frozen blocks run once over every view it trains and is scored on."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("frozen_cache")
