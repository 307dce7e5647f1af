"""One candidate's training: the schedule, steps and epochs under autocast, the LR range test, and early stopping
that never keeps an epoch below the start."""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from transferlab.core.progress import Progress
from transferlab.finetuning import distributed, frozen, tuning
from transferlab.finetuning.network import FineTuneNet, freeze, train_mode
from transferlab.inference import backends
from transferlab.inference.batches import ImageList, loader
from transferlab.settings.sections import Finetune

if TYPE_CHECKING:
    pass

def lr_factor(step: int, steps_per_epoch: int, finetune: Finetune) -> float:
    """Learning-rate multiplier at an optimiser step: linear warm-up, then cosine, step or constant."""
    warmup = finetune.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if finetune.schedule == "cosine":
        total = max(1.0, finetune.epochs * steps_per_epoch - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    if finetune.schedule == "step":
        return finetune.gamma ** (step // (finetune.step_size * steps_per_epoch))
    return 1.0


def precision(dev: torch.device) -> str:
    """What the fine-tune trains in: bfloat16 on GPUs with bf16, float16 with a gradient scaler on older GPUs
    (T4, V100), float32 on the CPU."""
    if dev.type != "cuda":
        return "float32"
    return "bfloat16" if backends.bf16_supported(dev) else "float16"


def _autocast(dev: torch.device):
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision(dev))
    return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)


def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dev: torch.device,
         optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
         weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: its loss, logits and labels on `dev`; one optimiser step where an optimizer is given (float16
    losses scaled by `scaler`; the mean loss weighted by `weight` for the gradient: a process's slice of a global
    batch, distributed.Shard)."""
    images = images.to(dev, non_blocking=True)
    if images.ndim == 4:  # images, or a cut's feature maps (a cut after a classifier layer gives vectors)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = labels.to(dev)
    with _autocast(dev):
        logits = model(images)
    # a process's slice of a small last batch may be empty: a zero loss, so that it still joins the gradient sync
    loss = nn.functional.cross_entropy(logits.float(), labels) if len(labels) else logits.float().sum()
    if optimizer is not None:
        scaler = scaler or torch.amp.GradScaler(dev.type, enabled=False)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * weight).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, logits, labels


def run_epoch(model: nn.Module, data, dev: torch.device, optimizer=None, scheduler=None,
              desc: str = "", scaler: torch.amp.GradScaler | None = None,
              shard: distributed.Shard | None = None) -> tuple[float, float]:
    """One pass; trains when an optimizer is given (float16 losses scaled by `scaler`; with `shard`, on this
    process's slice of each batch, the figures summed over the processes). Returns (mean loss, accuracy)."""
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        # tqdm.auto would call iter() on the DataLoader once more for async use: a throwaway iterator that draws
        # from the shuffle generator (and starts workers), so the order would depend on num_workers
        for images, labels, _ in Progress(iter(data), total=len(data), desc=desc, unit="batch", leave=False):
            weight = 1.0
            if shard is not None:
                images, labels, weight = shard.take(images, labels)
            loss, logits, labels = step(model, images, labels, dev, optimizer, scaler, weight)
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
    if shard is not None:
        loss_sum, correct, seen = shard.total(loss_sum, correct, seen)
    return loss_sum / seen, correct / seen


def optimizer_for(net: FineTuneNet, finetune: Finetune, lr: float, head_lr: float,
                  weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the unfrozen blocks (at `lr`, the first group where any) and the head (at `head_lr`, last)."""
    backbone_params = freeze(net, finetune.unfreeze)
    groups = [{"params": list(net.head.parameters()), "lr": head_lr}]
    if backbone_params:
        groups.insert(0, {"params": backbone_params, "lr": lr})
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def range_test(net: FineTuneNet, train: Dataset, finetune: Finetune, dev: torch.device,
               model: nn.Module | None = None) -> pd.DataFrame:
    """The LR range test (fastai's lr_find, Smith 2017): from `net`'s current weights, up to
    `finetune.range_test_steps` optimiser steps over the epochs' training views with the backbone rate rising
    exponentially through tuning.RANGE (`finetune`: one candidate's settings, its head rate and weight decay), stopped
    where the smoothed loss diverges. One row per step: lr, loss, smoothed. Changes `net`: the caller restores it."""
    torch.manual_seed(finetune.seed)
    model = net if model is None else model
    optimizer = optimizer_for(net, finetune, tuning.RANGE[0], finetune.head_lr, finetune.weight_decay)
    rates = np.geomspace(*tuning.RANGE, finetune.range_test_steps)
    workers = finetune.num_workers if isinstance(train, ImageList) else 0
    generator = torch.Generator().manual_seed(finetune.seed)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision(dev) == "float16")
    losses: list[float] = []
    train_mode(net, finetune.unfreeze, finetune.train_bn)
    with Progress(total=len(rates), desc="LR range test", unit="step", leave=False) as bar:
        for epoch in itertools.cycle(range(1, finetune.epochs + 1)):  # the views the cache holds, in turn
            train.seed = frozen.epoch_seed(finetune.seed, epoch)
            for images, labels, _ in iter(loader(train, finetune.batch_size, workers, True, generator)):
                optimizer.param_groups[0]["lr"] = rates[len(losses)]
                losses.append(step(model, images, labels, dev, optimizer, scaler)[0].item())
                bar.update()
                smooth = tuning.smoothed(losses)
                if len(losses) == len(rates) or tuning.diverged(smooth):
                    net.eval()
                    return pd.DataFrame({"lr": rates[:len(losses)], "loss": losses, "smoothed": smooth})
    raise AssertionError("unreachable: itertools.cycle never ends")


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a network's state on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def start_row(model: nn.Module, val, finetune: Finetune, dev: torch.device) -> dict[str, Any]:
    """Epoch 0 of every candidate's history: the start (the probe's head on the frozen backbone) scored on the
    validation split; it trains nothing, so its training columns are empty."""
    tick = time.perf_counter()
    workers = finetune.num_workers if isinstance(val, ImageList) else 0
    model.eval()
    val_loss, val_acc = run_epoch(model, loader(val, finetune.batch_size, workers), dev, desc="start val")
    return {"epoch": 0, "train_loss": math.nan, "train_accuracy": math.nan, "val_loss": val_loss,
            "val_accuracy": val_acc, "lr": 0.0, "head_lr": 0.0, "seconds": round(time.perf_counter() - tick, 3)}


def fit(net: FineTuneNet, train: Dataset, val: Dataset, finetune: Finetune, dev: torch.device,
        model: nn.Module | None = None, desc: str = "fine-tune",
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        shard: distributed.Shard | None = None, start: dict[str, Any] | None = None,
        prune: Callable[[int, float], bool] | None = None) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Fine-tune `net` (on `dev`) from its current weights at one candidate's settings (`finetune`: its augmentation's
    views are `train`, its `unfreeze`, `lr`, `head_lr` and `weight_decay` numbers): the last `finetune.unfreeze`
    blocks and the head, early stopping on validation loss. The start is epoch 0 (`start`, its `start_row`,
    scored here where not given): an epoch replaces the kept weights only where its validation loss is lower
    and its validation accuracy no lower than the start's (tuning.eligible), so where none is, the start's
    weights are returned. `prune(epoch, val_loss)` returning True stops the candidate (the search's pruner).
    Returns the kept epoch's state_dict (on the CPU) and one history row per epoch, from epoch 0.

    `train` and `val` are images (an ImageList; `train` holds the augmenting transform) or the frozen prefix's
    cached activations of the same views (frozen.Activations), and `model` then the network after the prefix
    (`frozen.Cache.tail`). Either way `train.seed` is set per epoch, so the views are reproducible. `on_epoch`
    gets each trained epoch's row as it ends (DVCLive). With `finetune.devices` > 1 it runs in that many
    processes (distributed.fit), each training on its `shard` of every batch, without pruning.
    """
    model = net if model is None else model
    start = start or start_row(model, val, finetune, dev)
    if finetune.devices > 1 and shard is None:
        freeze(net, finetune.unfreeze)  # before DistributedDataParallel: it syncs the gradients of what trains then
        best, history = distributed.fit(
            lambda wrapped, part: fit(net, train, val, finetune, dev, wrapped, desc, None, part, start), finetune.devices, model)
        for row in history[1:] if on_epoch is not None else []:  # DVCLive's run lives in this process: its epochs
            on_epoch(row)                                          # are logged here, as the processes end
        return best, history
    torch.manual_seed(finetune.seed)
    optimizer = optimizer_for(net, finetune, finetune.lr, finetune.head_lr, finetune.weight_decay)
    workers = finetune.num_workers if isinstance(train, ImageList) else 0  # cached activations need no decoding
    val_data = loader(val, finetune.batch_size, workers)
    generator = torch.Generator().manual_seed(finetune.seed)
    steps_per_epoch = math.ceil(len(train) / finetune.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, finetune))
    scaler = torch.amp.GradScaler(dev.type, enabled=precision(dev) == "float16")
    history, best, best_loss, waited = [dict(start)], snapshot(net), start["val_loss"], 0
    for epoch in Progress(range(1, finetune.epochs + 1), desc=desc, unit="epoch"):
        tick = time.perf_counter()
        train.seed = frozen.epoch_seed(finetune.seed, epoch)
        train_mode(net, finetune.unfreeze, finetune.train_bn)
        lrs = [g["lr"] for g in optimizer.param_groups]
        train_loss, train_acc = run_epoch(model, loader(train, finetune.batch_size, workers, True, generator),
                                          dev, optimizer, scheduler, f"epoch {epoch} train", scaler, shard)
        net.eval()
        val_loss, val_acc = run_epoch(model, val_data, dev, desc=f"epoch {epoch} val")
        history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                        "val_accuracy": val_acc, "lr": lrs[0], "head_lr": lrs[-1],
                        "seconds": round(time.perf_counter() - tick, 3)})
        if on_epoch is not None:
            on_epoch(history[-1])
        if val_loss < best_loss and tuning.eligible(val_acc, start["val_accuracy"]):
            best_loss, best, waited = val_loss, snapshot(net), 0
        else:
            waited += 1
            if waited >= finetune.patience:
                break
        if prune is not None and prune(epoch, val_loss):
            break
    return best, history
