"""Stage export: the chosen classifier as ONNX with labels, preprocessing and a model card."""
from transferlab.pipeline.runner import run_stage

if __name__ == "__main__":
    run_stage("export")
