"""The fine-tune: the probe's backbone + its trained head as one network, the last blocks unfrozen, trained with a
tiny backbone learning rate (linear probe, then fine-tune: LP-FT), every candidate of the search from one start."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax
from torch import nn
from torch.utils.data import Dataset

from transferlab.finetuning import frozen, prefix, tracking, tuning
from transferlab.finetuning.network import FineTuneNet, build, count_trainable, freeze
from transferlab.finetuning.training import fit, precision, range_test, snapshot, start_row
from transferlab.inference import backends
from transferlab.inference.batches import ImageList, device, predict_images
from transferlab.inference.transforms import augmented, evaluation
from transferlab.models import backbones
from transferlab.models.backbones import Backbone
from transferlab.settings import grid
from transferlab.settings.sections import Finetune

if TYPE_CHECKING:
    from dvclive import Live

log = logging.getLogger("transferlab")


def training_images(backbone: Backbone, finetune: Finetune, root: Path, frame: pd.DataFrame,
                    classes: list[str], keys: list[int] | None = None) -> ImageList:
    """The fine-tune's training images under one augmentation setting (`finetune.augment`), seeded by epoch and
    `keys` (default their rows)."""
    plain = backbone.preprocessing
    return ImageList(root, frame, classes, augmented(plain, finetune.augment), plain.resize, seed=finetune.seed, keys=keys)


def validation_images(backbone: Backbone, root: Path, frame: pd.DataFrame, classes: list[str]) -> ImageList:
    plain = backbone.preprocessing
    return ImageList(root, frame, classes, evaluation(plain), plain.resize)


def search(net: FineTuneNet, begin: dict[str, torch.Tensor], candidates: list[dict[str, Any]],
           views: Callable[[str], Dataset], val: Dataset, finetune: Finetune, dev: torch.device,
           model: nn.Module | None = None, live: Live | None = None,
           start: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, torch.Tensor], pd.DataFrame]:
    """Fit the `candidates` from the state `begin` (restored into `net` first, its fingerprint recorded),
    each on its augmentation's training `views`, in the order Optuna's grid sampler draws them (seeded by
    finetune.seed), a successive-halving pruner stopping a candidate after an epoch where its validation loss
    trails the others' at that epoch (finetune.prune; not with finetune.devices > 1). Returns the search table
    (`tuning.table`: every trial, pruned ones too), and the chosen candidate's kept weights (only the best so far
    is kept) and per-epoch history. Each epoch goes to `live` (DVCLive) as it ends, under the candidate's
    settings where there are several."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    indices = list(range(len(candidates)))
    pruning = finetune.prune and finetune.devices == 1 and len(candidates) > 2
    study = optuna.create_study(
        sampler=optuna.samplers.GridSampler({"candidate": indices}, seed=finetune.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3) if pruning
        else optuna.pruners.NopPruner())
    order = list(grid.augments(finetune))
    rows: list[dict[str, Any]] = []
    histories: list[pd.DataFrame] = []
    kept: dict[str, Any] = {"state": {}, "index": 0}

    def objective(trial: optuna.Trial) -> float:
        candidate = candidates[trial.suggest_categorical("candidate", indices)]
        net.load_state_dict(begin)
        fingerprint = prefix.fingerprint(net)[:16]
        pruned = []

        def prune(epoch: int, val_loss: float) -> bool:  # every epoch counts for later trials' rungs; the
            trial.report(val_loss, epoch)                    # last one has nothing left to stop
            pruned.append(epoch < finetune.epochs and trial.should_prune())
            return pruned[-1]

        logger = tracking.epoch_logger(live, tracking.prefix(candidate, candidates)) if live else None
        label = tuning.label(candidate) if len(candidates) > 1 else "fine-tune"
        state, history = fit(net, views(candidate["augment"]), val, tuning.setting(finetune, candidate), dev, model,
                             label, logger, start=start, prune=prune)
        rows.append({**candidate, "start_sha256": fingerprint, "state": "pruned" if any(pruned) else "complete"})
        histories.append(pd.DataFrame(history))
        if tuning.chosen(tuning.table(rows, histories, order)) == len(rows) - 1:
            kept.update(state=state, index=len(rows) - 1)
        if any(pruned):
            raise optuna.TrialPruned()
        return float(np.nanmin(histories[-1]["val_loss"]))

    study.optimize(objective, n_trials=len(candidates))
    return tuning.table(rows, histories, order), kept["state"], histories[kept["index"]]


def mixed(begin: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT's weights: (1 − α)·start + α·fine-tuned for every floating tensor the fine-tune changed (α = 0 is
    the start, 1 the fine-tune); the others (frozen blocks, counters) exactly as they are, so a frozen prefix keeps
    its fingerprint."""
    out = {}
    for name, value in tuned.items():
        same = not value.is_floating_point() or torch.equal(value, begin[name])
        out[name] = value.clone() if same else torch.lerp(begin[name], value, alpha)
    return out


def interpolate(net: FineTuneNet, begin: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                alphas: list[float], score: Callable[[str], tuple[float, float] | None],
                start_accuracy: float) -> tuple[float, pd.DataFrame]:
    """Score the weights `mixed` at each α (`score(split)`: log-loss and accuracy, None where the split is not
    scored) and keep the α with the lowest validation log-loss among those no worse than the start in
    validation accuracy (tuning.eligible; α = 1 where equal). Leaves `net` at the chosen α's weights. Returns that
    α and one row per α: val_log_loss, val_accuracy, test_accuracy (for the report's figure: never chosen on)."""
    rows = []
    for alpha in alphas:
        net.load_state_dict(mixed(begin, tuned, alpha))
        val_loss, val_accuracy = score("val")
        test = score("test")
        rows.append({"alpha": alpha, "val_log_loss": val_loss, "val_accuracy": val_accuracy,
                     "test_accuracy": test[1] if test else math.nan})
    table = pd.DataFrame(rows)
    allowed = table[[tuning.eligible(a, start_accuracy) for a in table["val_accuracy"]]]
    chosen = float(allowed.sort_values(["val_log_loss", "alpha"], ascending=[True, False]).iloc[0]["alpha"])
    net.load_state_dict(mixed(begin, tuned, chosen))
    return chosen, table


class Tuned(NamedTuple):
    """What `tune` returns: the chosen network, its summary and per-epoch history (from epoch 0, the start), the
    search table (every candidate's epochs) and the LR range test (empty where it did not run)."""
    net: FineTuneNet
    summary: dict[str, Any]
    history: pd.DataFrame
    search: pd.DataFrame
    range_test: pd.DataFrame


def scorer(net: FineTuneNet, backbone: Backbone, root: Path, frames: dict[str, pd.DataFrame],
           classes: list[str], batch_size: int, cache: frozen.Cache | None) -> Callable[[str], tuple[float, float] | None]:
    """score(split): the network's validation or test log-loss and accuracy as its weights are now (from the
    cache's activations where it holds the split's plain views), None for a split the frames do not hold."""
    of = predictor(net, backbone, root, classes, batch_size, cache)

    def score(split: str) -> tuple[float, float] | None:
        if split not in frames or not len(frames[split]):
            return None
        proba, labels = of(split, frames[split])
        picked = np.clip(proba[np.arange(len(labels)), labels], 1e-15, 1)
        return float(-np.log(picked).mean()), float((proba.argmax(1) == labels).mean())

    return score


def tune(backbone: Backbone, finetune: Finetune, probe: tuple[np.ndarray, np.ndarray], root: Path,
         frames: dict[str, pd.DataFrame], classes: list[str], cache: frozen.Cache | None = None,
         keys: list[int] | None = None, for_report: bool = False, live: Live | None = None) -> Tuned:
    """Warm-start from the probe and score that start on validation (epoch 0); run the LR range test where
    `tuning.needs_range_test` says (`for_report`: the main fine-tune, whose report shows it), with the first
    augmentation and the deepest depth; search the grid from that same start (`search`; from the frozen-prefix
    `cache` where given, else on the fly, the training views seeded by `keys`); where the chosen candidate
    improved on the start, mix its weights with the start at each finetune.interpolate α (`interpolate`). Returns
    the network with the chosen weights, a summary (`seconds`: range test, every candidate and the
    interpolation), its per-epoch history, the search table and the range test. Epochs and the choice are logged
    to `live` where given."""
    dev = device()
    net = build(backbone, probe).to(dev).to(memory_format=torch.channels_last)
    for blocks in grid.depths(finetune):
        backbones.check_unfreeze(net.backbone, blocks, backbone.name)
    tail = cache.tail(net) if cache else None
    if tail is None:
        val = validation_images(backbone, root, frames["val"], classes)

        def views(augment: str) -> Dataset:
            settings = dataclasses.replace(finetune, augment=grid.augments(finetune)[augment])
            return training_images(backbone, settings, root, frames["train"], classes, keys)
    else:
        val = cache.activations("val", frames["val"])

        def views(augment: str) -> Dataset:
            return cache.activations(frozen.train_part(finetune, augment), frames["train"], training=True)
    begin = snapshot(net)
    clock = time.perf_counter()
    start = start_row(net if tail is None else tail, val, finetune, dev)
    skipped = tuning.needs_range_test(finetune, tail is not None, for_report)
    curve = pd.DataFrame(columns=["lr", "loss", "smoothed"])
    if skipped is None:
        first = {**tuning.candidates(dataclasses.replace(finetune, lr=1.0))[0], "unfreeze": grid.deepest(finetune)}
        curve = range_test(net, views(first["augment"]), tuning.setting(finetune, first), dev, tail)
        net.load_state_dict(begin)
    suggested = tuning.suggest(curve) if len(curve) else None
    candidates = tuning.candidates(finetune, suggested)
    table, best, frame = search(net, begin, candidates, views, val, finetune, dev, tail, live, start)
    chosen = tuning.chosen_row(table)
    net.load_state_dict(best)
    improved = chosen["best_epoch"] > 0
    alpha, mixing = 1.0, pd.DataFrame()
    if improved and len(finetune.interpolate) > 1:
        score = scorer(net, backbone, root, frames, classes, finetune.batch_size, cache)
        alpha, mixing = interpolate(net, begin, best, finetune.interpolate, score, start["val_accuracy"])
    seconds = time.perf_counter() - clock
    diverged = [tuning.label(row) for row in
                (table[table["candidate"] == c].iloc[0] for c in tuning.diverged_candidates(table, len(classes)))]
    if diverged:
        log.warning("fine-tune: %d of %d candidates diverged on validation (loss not finite, or over %g× the start's "
                    "and a uniform guess's): %s%s", len(diverged), len(candidates), tuning.DIVERGED_VAL,
                    "; ".join(diverged), "" if improved else "; the start is handed on")
    freeze(net, chosen["unfreeze"])
    epochs = int((table["epoch"] > 0).sum())
    summary = {
        "enabled": True, "skipped": False, "improved": improved,
        "start": {"val_loss": round(start["val_loss"], 6), "val_accuracy": round(start["val_accuracy"], 6)},
        "epochs_run": len(frame) - 1, "best_epoch": chosen["best_epoch"],
        "stopped_early": len(frame) - 1 < finetune.epochs, "best_val_loss": round(chosen["val_log_loss"], 6),
        "best_val_accuracy": round(chosen["val_accuracy"], 6),
        "trainable_parameters": count_trainable(net), "total_parameters": sum(p.numel() for p in net.parameters()),
        "augment": chosen["augment"], "augment_setting": grid.augments(finetune)[chosen["augment"]],
        "unfreeze": chosen["unfreeze"], "lr": chosen["lr"], "head_lr": chosen["head_lr"],
        "weight_decay": chosen["weight_decay"], "candidates": len(candidates),
        "pruned": int(table.groupby("candidate")["state"].first().eq("pruned").sum()),
        "searched": {k: list(dict.fromkeys(c[k] for c in candidates)) for k in tuning.GRID},
        "diverged": diverged, "lr_auto": finetune.lr == "auto", "alpha": alpha,
        "interpolation": [{k: round(v, 6) for k, v in row.items()} for row in mixing.to_dict("records")],
        "range_test": {"ran": skipped is None, "steps": len(curve), "suggested_lr": suggested, "reason": skipped},
        "seconds": round(seconds, 3), "train_images_per_s": round(len(frames["train"]) * epochs / seconds, 2),
        "device": str(dev), "precision": precision(dev), "from_cache": tail is not None,
        "frozen_cache_seconds": cache.meta["seconds"] if tail is not None else 0.0,  # its compute, done once
    }
    if live is not None:
        tracking.log_choice(live, summary)
    return Tuned(net.eval(), summary, frame, table, curve)


def probabilities(model: nn.Module, backbone: Backbone) -> backends.Forward:
    """The network as a forward from uint8 batches to class probabilities (float64 softmax of its logits)."""
    plain = backbone.preprocessing
    logits = backends.torch_forward(backbones.Normalized(model, plain.mean, plain.std, scale=255), device())
    return lambda images: softmax(logits(images).astype(np.float64), axis=1)


def predict(model: FineTuneNet, frame: pd.DataFrame, root: Path, classes: list[str], backbone: Backbone,
            batch_size: int, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels of one split, plain preprocessing (with `tta`: averaged over TTA_VIEWS)."""
    return predict_images(probabilities(model, backbone), backbone.preprocessing, root, frame,
                          classes, batch_size, tta)


def predictor(model: FineTuneNet, backbone: Backbone, root: Path, classes: list[str], batch_size: int,
              cache: frozen.Cache | None = None) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """predict(split, frame, tta=False): class probabilities and labels of some of a split's images, from the
    frozen-prefix cache's activations where it holds that view of them, else from the images."""
    tail = cache.tail(model) if cache else None

    def of(split: str, frame: pd.DataFrame, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        part = "test_tta" if tta else {"train": "train_plain"}.get(split, split)
        if tail is not None and part in cache.meta["parts"]:
            return cache.probabilities(tail, part, frame, batch_size)
        return predict(model, frame, root, classes, backbone, batch_size, tta)

    return of
