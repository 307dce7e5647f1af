"""Stage visualize: ideal class image, adversarial examples and feature maps."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("visualize")
