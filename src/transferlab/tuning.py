"""The fine-tune's search on the validation split, as the probe's C is searched: the candidates of finetune.lr,
head_lr and weight_decay, the LR range test's suggestion, and the choice by the probe's rule (selection.choose).
The training itself is finetune.tune's."""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from . import selection

GRID = ("lr", "head_lr", "weight_decay")
# Among equal validation losses: the smaller rates (the network stays nearer the probe), then more weight decay.
SIMPLER = [("lr", True), ("head_lr", True), ("weight_decay", False)]
RANGE = (1e-7, 1.0)        # backbone learning rates the range test sweeps, rising exponentially
SMOOTHING = 0.9            # exponential moving average of the range test's losses (bias-corrected)
SETTLE = 10                # the average's first steps (1 / (1 - SMOOTHING)) are no reference
RISE = 1.5                 # the edge: the first rate whose smoothed loss exceeds this multiple of the lowest so far
DIVERGED = 4.0             # the range test stops once the smoothed loss exceeds this multiple of its settled lowest
AROUND = (1.0, 3.0, 10.0)  # finetune.lr: auto searches the decade from the suggested rate up to the edge
SEARCH_COLUMNS = ["candidate", *GRID, "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "start_sha256", "chosen"]


def values(setting: float | list[float]) -> list[float]:
    """A grid key's values: a list as given, one value as a list of one."""
    return list(setting) if isinstance(setting, list) else [setting]


def candidates(ft: dict[str, Any], suggested: float | None = None) -> list[dict[str, float]]:
    """Every combination of the grid keys' values (`lr: auto`: AROUND the `suggested` rate), in grid order.
    With `unfreeze: 0` no backbone block trains, so finetune.lr has no effect: its first value only."""
    rates = [suggested * f for f in AROUND] if ft["lr"] == "auto" else values(ft["lr"])
    if ft["unfreeze"] == 0:
        rates = rates[:1]
    grid = itertools.product(rates, values(ft["head_lr"]), values(ft["weight_decay"]))
    return [dict(zip(GRID, combo)) for combo in grid]


def needs_range_test(ft: dict[str, Any], from_cache: bool, for_report: bool) -> str | None:
    """Why the range test does not run (None where it does): it runs for `lr: auto`, and otherwise for the
    report's figure where the fine-tune trains from the frozen-prefix cache (a pass there costs seconds)."""
    if ft["unfreeze"] == 0:
        return "finetune.unfreeze: 0 trains no backbone block, so there is no backbone rate to test"
    if ft["lr"] == "auto":
        return None
    if not for_report:
        return "finetune.lr is given; the range test runs for finetune.lr: auto and for the main fine-tune's report"
    if ft["range_test_steps"] == 0:
        return "finetune.range_test_steps: 0"
    if not from_cache:
        return "the fine-tune runs on the fly, where a range test costs a fine-tune epoch; finetune.lr: auto runs it"
    return None


def smoothed(losses: list[float]) -> list[float]:
    """Bias-corrected exponential moving average of the range test's losses (fastai's lr_find smoothing)."""
    out, average = [], 0.0
    for i, loss in enumerate(losses, start=1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING**i))
    return out


def diverged(smooth: list[float]) -> bool:
    """Whether the range test can stop: its smoothed loss is not finite, or DIVERGED times its lowest after the
    average has settled."""
    if not np.isfinite(smooth[-1]):
        return True
    return len(smooth) > SETTLE and smooth[-1] > DIVERGED * min(smooth[SETTLE:])


def edge(curve: pd.DataFrame) -> int:
    """The row where the smoothed loss first rises RISE times above its lowest so far (after SETTLE steps), or
    the last row where it never does."""
    smooth = curve["smoothed"].to_numpy(dtype=float)
    lowest = np.minimum.accumulate(np.where(np.arange(len(smooth)) < SETTLE, np.inf, smooth))
    above = np.flatnonzero(smooth > RISE * lowest)
    return int(above[0]) if len(above) else len(smooth) - 1


def suggest(curve: pd.DataFrame) -> float:
    """The suggested backbone rate: a tenth of the rate at the edge (`edge`), the classic decade below where
    the loss climbs (Smith 2017; fastai's lr_find). A fine-tune warm-started from the probe begins near a
    minimum, so its loss does not fall first: the curve is flat, then climbs, and the edge is where it turns."""
    return float(curve["lr"].iloc[edge(curve)] / 10)


def table(rows: list[dict[str, Any]], histories: list[pd.DataFrame]) -> pd.DataFrame:
    """The search table, one row per candidate and epoch, with the chosen candidate marked: `rows` hold each
    candidate's settings and start fingerprint, `histories` its per-epoch losses."""
    frames = [history.assign(candidate=i, start_sha256=row["start_sha256"], **{k: row[k] for k in GRID})
              for i, (row, history) in enumerate(zip(rows, histories))]
    search = pd.concat(frames, ignore_index=True)
    search["chosen"] = search["candidate"] == chosen(search)
    return search[SEARCH_COLUMNS]


def scores(search: pd.DataFrame) -> pd.DataFrame:
    """Per candidate: its settings and its best epoch's validation loss (`val_log_loss`: the model early stopping
    keeps) and accuracy."""
    best = search.loc[search.groupby("candidate")["val_loss"].idxmin()]
    renamed = best.rename(columns={"val_loss": "val_log_loss", "epoch": "best_epoch"})
    return renamed.set_index("candidate", drop=False)


def chosen(search: pd.DataFrame) -> int:
    """The candidate the probe's rule keeps: the lowest validation log-loss, the simplest where equal."""
    return int(selection.choose(scores(search), SIMPLER))


def chosen_row(search: pd.DataFrame) -> dict[str, Any]:
    """The chosen candidate's settings and validation scores."""
    best = scores(search).loc[chosen(search)]
    return {**{k: float(best[k]) for k in GRID}, "best_epoch": int(best["best_epoch"]),
            "val_log_loss": float(best["val_log_loss"]), "val_accuracy": float(best["val_accuracy"])}
