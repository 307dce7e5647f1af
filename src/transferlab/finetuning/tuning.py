"""The fine-tune's search on the validation split, as the probe's C is searched: the candidates of finetune.augment,
unfreeze, lr, head_lr and weight_decay, the LR range test's suggestion, and the choice by the probe's rule
(selection.choose) among the epochs no worse than the start in validation accuracy — the start itself (epoch 0:
the probe's head on the frozen backbone) always one of them. The training itself is finetune.tune's."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pandas as pd

from transferlab.probe import selection
from transferlab.settings.grid import augments, blocks, depth, depths
from transferlab.settings.sections import Finetune

GRID = ("augment", "unfreeze", "lr", "head_lr", "weight_decay")
RATES = ("lr", "head_lr", "weight_decay")
# Among equal validation losses (every candidate's epoch 0 is the same start): the start, then fewer trained
# blocks, the smaller rates (the network stays nearer the probe), more weight decay, the first-listed augmentation.
SIMPLER = [("best_epoch", True), ("depth", True), ("lr", True), ("head_lr", True), ("weight_decay", False),
           ("augment_rank", True)]
RANGE = (1e-7, 1.0)        # backbone learning rates the range test sweeps, rising exponentially
SMOOTHING = 0.9            # exponential moving average of the range test's losses (bias-corrected)
SETTLE = 10                # the average's first steps (1 / (1 - SMOOTHING)) are no reference
RISE = 1.5                 # the edge: the first rate whose smoothed loss exceeds this multiple of the lowest so far
DIVERGED = 4.0             # the range test stops once the smoothed loss exceeds this multiple of its settled lowest
AROUND = (1.0, 3.0, 10.0)  # finetune.lr: auto searches the decade from the suggested rate up to the edge
DIVERGED_VAL = 4.0  # a candidate diverged where its validation loss exceeds this multiple of the start's (and ln K)
SEARCH_COLUMNS = ["candidate", *GRID, "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "state",
                  "augment_rank", "depth", "start_sha256", "chosen"]


def values(setting: float | list[float]) -> list[float]:
    """A grid key's values: a list as given, one value as a list of one."""
    return list(setting) if isinstance(setting, list) else [setting]


def candidates(finetune: Finetune, suggested: float | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid keys' values (`lr: auto`: AROUND the `suggested` rate), in grid order.
    Where `unfreeze` is 0 no backbone block trains, so finetune.lr has no effect: its first value only."""
    rates = [suggested * f for f in AROUND] if finetune.lr == "auto" else values(finetune.lr)
    grid = []
    for augment, unfreeze, lr, head_lr, decay in itertools.product(
            augments(finetune), depths(finetune), rates, values(finetune.head_lr), values(finetune.weight_decay)):
        if unfreeze != 0 or lr == rates[0]:
            grid.append(dict(zip(GRID, (augment, unfreeze, lr, head_lr, decay))))
    return grid


def setting(finetune: Finetune, candidate: dict[str, Any]) -> Finetune:
    """The fine-tune settings of one candidate: `finetune` with its augmentation (the named setting), depth and rates."""
    return dataclasses.replace(finetune, **{**candidate, "augment": augments(finetune)[candidate["augment"]]})


def label(candidate: dict[str, Any]) -> str:
    """A candidate as one short phrase: "none, 2 blocks, lr 1e-05, head 0.001, wd 0.0001"."""
    return (f"{candidate['augment']}, {blocks(candidate['unfreeze'])}, lr {candidate['lr']:g}, head {candidate['head_lr']:g}, "
            f"wd {candidate['weight_decay']:g}")


def needs_range_test(finetune: Finetune, from_cache: bool, for_report: bool) -> str | None:
    """Why the range test does not run (None where it does): it runs for `lr: auto`, and otherwise for the
    report's figure where the fine-tune trains from the frozen-prefix cache (a pass there costs seconds)."""
    if depths(finetune) == [0]:
        return "finetune.unfreeze: 0 trains no backbone block, so there is no backbone rate to test"
    if finetune.lr == "auto":
        return None
    if not for_report:
        return "finetune.lr is given; the range test runs for finetune.lr: auto and for the main fine-tune's report"
    if finetune.range_test_steps == 0:
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


def eligible(val_accuracy: float, start_accuracy: float) -> bool:
    """Whether an epoch may be kept: no fewer validation images right than the start (a lower log-loss bought
    with fewer right answers is not an improvement the verdict could stand on)."""
    return bool(np.isfinite(val_accuracy)) and val_accuracy >= start_accuracy - 1e-12


def table(rows: list[dict[str, Any]], histories: list[pd.DataFrame], order: list[str]) -> pd.DataFrame:
    """The search table, one row per candidate and epoch (epoch 0: the start), with the chosen candidate marked:
    `rows` hold each candidate's settings, state (complete, pruned) and start fingerprint, `histories` its
    per-epoch losses; `order` the augmentations' names as listed (the later, the less simple)."""
    frames = [history.assign(candidate=i, start_sha256=row["start_sha256"], state=row["state"],
                             augment_rank=order.index(row["augment"]), depth=depth(row["unfreeze"]),
                             **{k: row[k] for k in GRID})
              for i, (row, history) in enumerate(zip(rows, histories))]
    search = pd.concat(frames, ignore_index=True)
    search["chosen"] = search["candidate"] == chosen(search)
    return search[SEARCH_COLUMNS]


def scores(search: pd.DataFrame) -> pd.DataFrame:
    """Per candidate: its settings and the epoch its early stopping keeps (`best_epoch`, 0 = the start): the
    lowest validation loss (`val_log_loss`) among the epochs `eligible` against epoch 0, and its accuracy."""
    start = search[search["epoch"] == 0].groupby("candidate")["val_accuracy"].first()
    allowed = search[[eligible(a, start[c]) for c, a in zip(search["candidate"], search["val_accuracy"])]]
    best = allowed.loc[allowed.groupby("candidate")["val_loss"].idxmin()]
    renamed = best.rename(columns={"val_loss": "val_log_loss", "epoch": "best_epoch"})
    return renamed.set_index("candidate", drop=False)


def chosen(search: pd.DataFrame) -> int:
    """The candidate the probe's rule keeps: the lowest validation log-loss, the simplest where equal."""
    return int(selection.choose(scores(search), SIMPLER))


def chosen_row(search: pd.DataFrame) -> dict[str, Any]:
    """The chosen candidate's settings and validation scores."""
    best = scores(search).loc[chosen(search)]
    unfreeze = best["unfreeze"]
    return {"augment": str(best["augment"]), "unfreeze": unfreeze if unfreeze == "all" else int(unfreeze),
            **{k: float(best[k]) for k in RATES}, "best_epoch": int(best["best_epoch"]),
            "val_log_loss": float(best["val_log_loss"]), "val_accuracy": float(best["val_accuracy"])}


def diverged_candidates(search: pd.DataFrame, classes: int) -> list[int]:
    """Candidates whose validation loss blew up: not finite, or above both DIVERGED_VAL times the start's and a
    uniform guess's over the `classes` (ln K): worse than knowing nothing, not merely worse than the start."""
    start = search[search["epoch"] == 0].groupby("candidate")["val_loss"].first()
    trained = search[search["epoch"] > 0]
    limit = np.maximum(DIVERGED_VAL * trained["candidate"].map(start), np.log(classes))
    bad = trained[~np.isfinite(trained["val_loss"]) | (trained["val_loss"] > limit)]
    return sorted(int(c) for c in bad["candidate"].unique())
