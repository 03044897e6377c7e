"""Data-parallel training under `torchrun`: one process per device, and rank 0 writes the
recording. Two ways, chosen by the config's ``parallel`` (the registry ``PARALLEL``):

* ``ddp``: every rank holds the whole model; DDP averages the gradients. Only rank 0 records.
* ``fsdp``: FSDP2, ``fully_shard`` on every decoder block and then on the root. Each rank holds
  a shard of every parameter (DTensors), LoRA's included, so every rank runs a Recorder that
  joins the gathers of each snapshot (``lorascope.record.gather``); rank 0 writes.

Each rank draws the same global batch from the same seeded loader and keeps its own slice of
rows. A run on N processes therefore sees exactly the batches of a one-process run with the same
config (data.batch_size is the global micro-batch), and its recording matches that run's up to
floating-point reduction order."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from lorascope.errors import UsageError
from lorascope.registry import Registry

__all__ = ["DistInfo", "Parallel", "PARALLEL", "init_distributed", "shard_batches", "wrap_model", "unwrap_model",
           "decoder_blocks", "full_trainable_state", "global_sums", "shutdown"]


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


@dataclass(frozen=True)
class Parallel:
    wrap: Callable[[torch.nn.Module, DistInfo, torch.device], torch.nn.Module]
    # True: wrapping replaces the parameters (FSDP2's DTensors), so it comes before the optimizer
    # is built, and reading them whole (saving adapters, recording) is a collective
    shards_parameters: bool
    description: str


PARALLEL: Registry[Parallel] = Registry("parallel mode (config: parallel)")


def _ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, by the class names a Hugging Face model lists as never to be
    split across devices (``_no_split_modules``: GPT2Block, LlamaDecoderLayer, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _fully_shard(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    blocks = decoder_blocks(model)
    if not blocks:
        raise UsageError(
            f"parallel = fsdp shards a model block by block, but {type(model).__name__} names no blocks "
            "(_no_split_modules); use parallel = ddp for it"
        )
    mesh = init_device_mesh(device.type, (info.world_size,))
    # a unit per block: its weights are gathered for its forward and freed after; the root's
    # unit holds what is left (embeddings, final norm, head)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


PARALLEL.register("ddp")(Parallel(_ddp, False, "DistributedDataParallel: the whole model on every rank"))
PARALLEL.register("fsdp")(Parallel(_fully_shard, True, "FSDP2: fully_shard per decoder block and the root"))


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device, parallel: str = "ddp") -> torch.nn.Module:
    """The model as ``parallel`` trains it (itself when there is one process)."""
    mode = PARALLEL.get(parallel)
    return mode.wrap(model, info, device) if info.enabled else model


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's trainable parameters by name, whole, on rank 0's CPU ({} on the other
    ranks). A collective: every rank calls it. The frozen base is never gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: value for name, value in state.items() if name in trainable}


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
