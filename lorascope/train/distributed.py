"""Data-parallel training under `torchrun`: one process per device, gradients averaged by DDP,
and only rank 0 records.

Each rank draws the same global batch from the same seeded loader and keeps its own slice of
rows. A run on N processes therefore sees exactly the batches of a one-process run with the same
config (data.batch_size is the global micro-batch), and its recording matches that run's up to
floating-point reduction order."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from lorascope.errors import UsageError

__all__ = ["DistInfo", "init_distributed", "shard_batches", "wrap_model", "unwrap_model", "global_sums", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Reads torchrun's environment; starts the process group when there is more than one process.
    Returns the info and the device this rank trains on (cuda:<local rank> on GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def shard_batches(batches: Iterable[dict[str, torch.Tensor]], info: DistInfo) -> Iterable[dict[str, torch.Tensor]]:
    if not info.enabled:
        return batches
    return _Shard(batches, info)


class _Shard:
    """Re-iterable (the loop cycles through epochs), yielding this rank's rows of each batch."""

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]], info: DistInfo) -> None:
        self.batches, self.info = batches, info

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.batches:
            rows = next(iter(batch.values())).shape[0]
            if rows % self.info.world_size:
                raise UsageError(
                    f"data.batch_size ({rows}) must be divisible by the number of processes "
                    f"({self.info.world_size}) under torchrun; it is the global micro-batch size"
                )
            per_rank = rows // self.info.world_size
            lo = self.info.rank * per_rank
            yield {k: v[lo:lo + per_rank] for k, v in batch.items()}


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def global_sums(*values: float) -> list[float]:
    """Sums of per-rank numbers over all ranks (themselves when not distributed): one all-reduce
    per step, so the loss and token counts that rank 0 records describe the global batch."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
