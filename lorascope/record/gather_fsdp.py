"""FSDP2 (``torch.distributed.fsdp.fully_shard``): LoRA parameters, their gradients and AdamW's
moments are DTensors, row-sharded (``Shard(0)``) over a 1-D mesh of all ranks.

For that layout a snapshot is one ``dist.gather`` to rank 0 per dtype: every rank packs its local
rows of every tensor, padded to the chunk size of ``torch.chunk`` (the split DTensor uses), into
one flat buffer; rank 0 cuts the stacked buffers back into tensors. A tensor in any other
layout (HSDP's 2-D mesh, a ``shard_placement_fn``, tensor parallelism) goes through its own
``full_tensor()``, an all-gather."""
from __future__ import annotations

import math
from itertools import accumulate
from typing import Any, Sequence

import torch
import torch.distributed as dist

from lorascope.lora.pairs import LoraPair
from lorascope.record.gather import GATHERS, Gather, GatherKind, StateEntry, loaded, state_tensor_keys

__all__ = ["DTensorGather"]


def _dtensor_type() -> type | None:
    module = loaded("torch.distributed.tensor")
    return module.DTensor if module is not None else None


def _detects(model: torch.nn.Module) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


class DTensorGather(Gather):
    name = "fsdp2"
    sharded = True

    def __init__(self, model: torch.nn.Module) -> None:
        from torch.distributed.tensor import DTensor, Replicate, Shard

        self._DTensor, self._Replicate, self._Shard = DTensor, Replicate, Shard
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def writes(self) -> bool:
        return self.rank == 0

    # --- whole tensors on rank 0 --------------------------------------------------------------
    def weights(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        return self._full([t.detach() for t in tensors])

    def grads(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        # FSDP2 leaves .grad None on every rank alike (a frozen matrix), never on some ranks only
        return self._full([p.grad.detach() if p.grad is not None else torch.zeros(p.shape, dtype=p.dtype,
                                                                                 device=p.device)
                           for p in params])

    def state_keys(self, optimizer: Any, param: torch.Tensor) -> list[str]:
        return state_tensor_keys(optimizer.state.get(param, {}))  # DTensor moments: the same keys on every rank

    def state(self, optimizer: Any, entries: Sequence[StateEntry]) -> list[torch.Tensor] | None:
        return self._full([optimizer.state[p][k].detach() for p, k in entries])

    def base_weight(self, pair: LoraPair) -> torch.Tensor | None:
        from torch.distributed.tensor.experimental import implicit_replication

        # lorascope's layer adds small unsharded offsets to its sharded base: plain tensors count
        # as replicated here, so that arithmetic runs on each shard
        with torch.no_grad(), implicit_replication():
            weight = pair.base_weight()
        if isinstance(weight, self._DTensor):
            weight = weight.full_tensor()  # once per module, one module at a time
        return weight.to("cpu", torch.float32) if self.writes else None

    def _full(self, tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
        out: list[torch.Tensor] = list(tensors)
        packed = [i for i, t in enumerate(tensors) if self._packable(t)]
        for dtype in dict.fromkeys(tensors[i].dtype for i in packed):  # first-seen order: alike on every rank
            group = [i for i in packed if tensors[i].dtype == dtype]
            whole = _gather_rows([tensors[i] for i in group], self.rank, self.world)
            if whole is not None:
                for i, t in zip(group, whole):
                    out[i] = t
        for i, t in enumerate(tensors):
            if isinstance(t, self._DTensor) and i not in packed:
                out[i] = t.full_tensor()
        return out if self.writes else None

    def _packable(self, t: torch.Tensor) -> bool:
        return (isinstance(t, self._DTensor) and t.device_mesh.ndim == 1 and t.device_mesh.size() == self.world
                and tuple(t.placements) == (self._Shard(0),))

    # --- update norms -------------------------------------------------------------------------
    def local(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self._local(t.detach()) for t in tensors]

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, self._DTensor):  # whole on every rank: counted on rank 0 only
            return t if self.rank == 0 else t.new_empty(0)
        shard = t.to_local()
        coordinate = t.device_mesh.get_coordinate() or []
        # a shard replicated along a mesh dimension (HSDP) counts on that dimension's first rank
        if any(isinstance(p, self._Replicate) and c != 0 for p, c in zip(t.placements, coordinate)):
            return shard.new_empty(0)
        return shard

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor | None:
        dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
        return tensor if self.writes else None


def _gather_rows(tensors: list[torch.Tensor], rank: int, world: int) -> list[torch.Tensor] | None:
    """Row-sharded DTensors of one dtype, whole on rank 0 (None elsewhere), in one collective.
    Rank r holds rows [r·c, min((r+1)·c, n)) of an n-row tensor, c = ceil(n / world)."""
    shapes = [tuple(t.shape) for t in tensors]
    rows = [math.ceil(s[0] / world) if s else 0 for s in shapes]
    sizes = [c * math.prod(s[1:]) for c, s in zip(rows, shapes)]
    offsets = [0, *accumulate(sizes)]
    shards = [t.to_local() for t in tensors]
    sample = shards[0]
    flat = torch.zeros(offsets[-1], dtype=sample.dtype, device=sample.device)
    torch._foreach_copy_([flat[o:o + s.numel()].view(s.shape) for o, s in zip(offsets, shards)], shards)
    stacked = torch.empty(world, offsets[-1], dtype=flat.dtype, device=flat.device) if rank == 0 else None
    dist.gather(flat, gather_list=list(stacked.unbind(0)) if stacked is not None else None, dst=0)
    if stacked is None:
        return None
    # (world, c·rest) → (world·c, *rest): the padded rows of every rank in order, then cut to n
    return [stacked[:, o:o + size].reshape(world * c, *s[1:])[:s[0]]
            for o, size, c, s in zip(offsets, sizes, rows, shapes)]


GATHERS.register("fsdp2")(GatherKind(
    _detects, DTensorGather,
    "FSDP2 (fully_shard): DTensor shards gathered to rank 0 in one collective per snapshot"))
