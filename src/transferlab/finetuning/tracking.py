"""The fine-tune's history through DVCLive: each epoch's losses, accuracies and rates as DVC metrics and step
plots (`dvc exp show`, `dvc plots show`, VS Code's DVC extension), written as each epoch ends."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dvclive import Live

# history column → DVCLive metric name (a "/" nests it: train/loss is {"train": {"loss": …}} in metrics.json)
METRICS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy", "val_loss": "val/loss",
           "val_accuracy": "val/accuracy", "lr": "lr", "head_lr": "head_lr"}


def open_live(folder: Path | str) -> Live:
    """A DVCLive logger that writes into `folder` only: it never rewrites dvc.yaml (dvc.yaml declares its metrics
    and plots; under Snakemake DVCLive would otherwise add them there) nor saves a DVC experiment itself (`dvc exp
    run` saves it; a Snakemake run has none). Imported here: only the finetune stage logs."""
    from dvclive import Live

    return Live(str(folder), dvcyaml=False, save_dvc_exp=False, report=None)


def prefix(candidate: dict[str, Any], grid: list[dict[str, Any]]) -> str:
    """The metric-name prefix of a search candidate: the settings that vary over the grid ("lr_1e-04/": no dot,
    which `dvc exp show` would read as nesting), none for a single candidate."""
    varying = [k for k in candidate if len({c[k] for c in grid}) > 1]
    return "".join(f"{k}_{_word(candidate[k])}/" for k in varying)


def _word(value: Any) -> str:
    """A setting in a metric name: a rate as 1e-04, a depth or augmentation as it is (no dot, no space)."""
    return f"{value:.0e}" if isinstance(value, float) else str(value).replace(" ", "_")


def epoch_logger(live: Live, name: str) -> Callable[[dict[str, Any]], None]:
    """Log one candidate's epochs (history rows), from step 0: the step plots under `name`, and in metrics.json
    (what `dvc exp show` lists while the stage runs) the epoch just ended, under the plain names, with its
    candidate — one set of columns however large the grid."""
    live.step = 0

    def log(row: dict[str, Any]) -> None:
        for column, metric in METRICS.items():
            live.log_metric(f"{name}{metric}", row[column])
        live.summary = {"candidate": name.rstrip("/") or "the one setting", "epoch": row["epoch"]}
        for column, metric in METRICS.items():
            live.log_metric(metric, row[column], plot=False)
        live.next_step()

    return log


def log_choice(live: Live, summary: dict[str, Any]) -> None:
    """The search's outcome as the final metrics.json: the chosen rates, best epoch and validation loss, and the
    number of candidates (their epochs stay in the step plots)."""
    live.summary = {}
    for key in ("lr", "head_lr", "weight_decay", "best_val_loss", "best_epoch", "candidates"):
        live.log_metric(f"chosen/{key}", summary[key], plot=False)
