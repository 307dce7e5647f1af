"""The fine-tune over several processes (`finetune.devices: N`): DistributedDataParallel, one process per device.

Every process sees the same seeded order of global batches (finetune.batch_size images) and takes its slice of
each; gradients are averaged across processes weighted by each slice's size, so a step is the step one process
would take on the whole batch, and the epoch's losses and accuracies are summed over the processes: the same
numbers as `devices: 1` to float rounding (tests/test_finetune.py). The gloo backend on the CPU, the processes
sharing its cores (a GPU per process is not built yet: devices > 1 is refused where CUDA is present).
Processes are forked: they inherit the network and the data, and the first one hands back the best weights and
the history (logged to DVCLive by the parent as the processes end).
"""
from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import multiprocessing as mp
from torch import nn

from transferlab.core.errors import UserError


class Shard:
    """This process's part of every global batch, and the sums the epoch's figures need from all processes."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def take(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The rows of the global batch this process trains on, and the weight of its mean loss: its share of
        the batch times the number of processes (DDP averages the processes' gradients)."""
        rows = slice(self.rank, None, self.world)
        return images[rows], labels[rows], len(labels[rows]) * self.world / len(labels)

    def total(self, *values: float) -> list[float]:
        """Each value summed over the processes."""
        summed = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(summed)
        return summed.tolist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit(fit_one: Callable[..., tuple[dict[str, torch.Tensor], list[dict[str, Any]]]], devices: int,
        model: nn.Module) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """`fit_one(wrapped, shard)` in `devices` forked CPU processes, `wrapped` being `model` in
    DistributedDataParallel; the first process's (best weights, history)."""
    if torch.cuda.is_available():
        raise UserError(f"finetune.devices: {devices} processes run on the CPU only so far (forked processes cannot "
                        f"share an initialised CUDA context); on a GPU use devices: 1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pt"
        mp.start_processes(_process, args=(devices, _free_port(), fit_one, model, out), nprocs=devices,
                           start_method="fork")
        result = torch.load(out, weights_only=True)
    return result["best"], result["history"]


def _process(rank: int, world: int, port: int, fit_one: Callable, model: nn.Module, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
        best, history = fit_one(nn.parallel.DistributedDataParallel(model), Shard(rank, world))
        if rank == 0:
            torch.save({"best": best, "history": history}, out)
    finally:
        dist.destroy_process_group()
