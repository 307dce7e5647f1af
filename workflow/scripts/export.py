"""Stage export: the chosen classifier as ONNX with labels, preprocessing and a model card → results/model/."""
from pathlib import Path

from transferlab import export
from transferlab.cli import log, run_stage


def main(params, args) -> None:
    summary = export.run(Path("."), params["export"]["method"], Path("workflow/report/model_card.md.j2"),
                         Path("results/model"))
    log.info("export: %s", summary)


if __name__ == "__main__":
    run_stage("export", main)
