"""FSDP1 (``FullyShardedDataParallel``) with ``use_orig_params=True``: each FSDP unit flattens
its parameters into one flat parameter and keeps a slice of it per rank; the LoRA parameters
stay the user's ``Parameter`` objects, viewing their part of the local slice (often none).

FSDP1 cannot gather part of a flat parameter, so a snapshot unshards, one unit at a time, each
unit that holds a recorded tensor (``summon_full_params(unit, recurse=False, with_grads=...)``):
where LoRA shares a unit with its frozen base (a unit per decoder block), that moves the block's
base weights too, as a forward pass does. Wrap the LoRA layers in units of their own (PEFT's
``fsdp_auto_wrap_policy``) and a snapshot moves LoRA only.

Optimizer state has no such call: the optimizer holds, per parameter, a 1-D moment over that
parameter's part of the local slice, and the parts of ranks 0, 1, ... in order are the whole
parameter, flattened (a flat parameter is cut into equal consecutive slices). So the moments are
gathered to rank 0 and joined in rank order. (``FSDP.optim_state_dict`` would do it for every
trained parameter, but with torch 2.13 on gloo it returned ``exp_avg`` equal to ``exp_avg_sq``.)"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from lorascope.errors import UsageError
from lorascope.lora.pairs import LoraPair, clean_module_name
from lorascope.record.gather import GATHERS, Gather, GatherKind, StateEntry, loaded, state_tensor_keys

__all__ = ["Fsdp1Gather"]

_LINEAR_ONLY = ("under FSDP1 lorascope records plain LoRA on linear layers only: shard with FSDP2 (fully_shard) "
                "to record this model")


def _fsdp_class() -> type | None:
    module = loaded("torch.distributed.fsdp.fully_sharded_data_parallel")
    return module.FullyShardedDataParallel if module is not None else None


def _detects(model: torch.nn.Module) -> bool:
    fsdp = _fsdp_class()
    return fsdp is not None and any(isinstance(m, fsdp) for m in model.modules())


class Fsdp1Gather(Gather):
    name = "fsdp1"
    sharded = True

    def __init__(self, model: torch.nn.Module) -> None:
        self.FSDP = fsdp = _fsdp_class()
        self.units = fsdp.fsdp_modules(model)  # pre-order: an enclosing unit before the units inside it
        if not all(getattr(u, "_use_orig_params", True) for u in self.units):
            raise UsageError(
                "recording FSDP1 needs use_orig_params=True (accelerate: fsdp_use_orig_params: true), "
                "which keeps the LoRA parameters visible; or shard with FSDP2's fully_shard instead"
            )
        self.root = self.units[0] if isinstance(model, fsdp) else model
        # FSDP1 settles which unit is the root at its first use: summoning an inner unit first
        # would make that one the root and break the next forward. The outermost unit goes first.
        with fsdp.summon_full_params(self.units[0], recurse=False, writeback=False):
            pass
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # the unit that holds each parameter: the innermost one, since a later unit in pre-order
        # is nested inside the earlier ones
        self._owner: dict[int, Any] = {}
        for unit in self.units:
            for p in unit.parameters():
                self._owner[id(p)] = unit
        self._modules = {clean_module_name(n): m for n, m in model.named_modules()}
        self._shapes: dict[int, tuple[int, ...]] = {}

    @property
    def writes(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def discovery(self) -> Iterator[None]:
        """Linear LoRA layers know their sizes; other kinds read them from the parameters'
        shapes, which are 1-D slices here."""
        try:
            yield
        except IndexError:
            raise UsageError(_LINEAR_ONLY) from None

    def bind(self, pairs: dict[str, LoraPair]) -> None:
        """The parameters' own shapes are their local slices (1-D); the pairs know the full ones,
        as long as a parameter is the recorded matrix itself."""
        odd = [p for p in pairs.values() if p.matrix is not None or p.magnitude is not None]
        if odd:
            raise UsageError(f"{_LINEAR_ONLY}, not {odd[0].kind}{' with DoRA' if odd[0].magnitude is not None else ''} "
                             f"({odd[0].name})")
        for pair in pairs.values():
            self._shapes[id(pair.A)], self._shapes[id(pair.B)] = pair.a_shape, pair.b_shape

    def shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        return self._shapes.get(id(tensor), tuple(tensor.shape))

    def weights(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        return self._summoned(tensors, lambda p: p.detach(), grads=False)

    def grads(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        return self._summoned(params, lambda p: p.grad.detach() if p.grad is not None else torch.zeros_like(p),
                              grads=True)

    def _summoned(self, tensors: Sequence[torch.Tensor], read, grads: bool) -> list[torch.Tensor] | None:
        out: list[torch.Tensor | None] = [None] * len(tensors)
        by_unit: dict[int, list[int]] = {}
        for i, t in enumerate(tensors):
            by_unit.setdefault(id(self._owner.get(id(t))), []).append(i)
        for unit in [None, *self.units]:  # the same order on every rank
            indices = by_unit.get(id(unit), [])
            if not indices:
                continue
            summon = (contextlib.nullcontext() if unit is None else
                      self.FSDP.summon_full_params(unit, recurse=False, writeback=False, with_grads=grads))
            with summon:
                if self.writes:  # the unsharded storage is freed on leaving: copy what is kept
                    for i in indices:
                        out[i] = read(tensors[i]).clone()
        return out if self.writes else None  # type: ignore[return-value]

    def state_keys(self, optimizer: Any, param: torch.Tensor) -> list[str]:
        # a rank that holds no element of ``param`` has no state for it: the union of all ranks'
        keys: list[list[str] | None] = [None] * self.world
        dist.all_gather_object(keys, state_tensor_keys(optimizer.state.get(param, {})))
        return sorted(set().union(*keys))

    def state(self, optimizer: Any, entries: Sequence[StateEntry]) -> list[torch.Tensor] | None:
        parts = []
        for p, key in entries:
            state = optimizer.state.get(p, {})
            if key not in state and p.numel() > 0:
                raise KeyError(key)
            parts.append(state[key].detach().reshape(-1) if key in state else p.detach().new_empty(0))
        whole = _gather_joined(parts, self.rank, self.world)
        return [w.view(self.shape(p)) for w, (p, _) in zip(whole, entries)] if whole is not None else None

    def base_weight(self, pair: LoraPair) -> torch.Tensor | None:
        module = self._modules[pair.name]
        units = list(dict.fromkeys(self._owner[id(p)] for p in module.parameters() if id(p) in self._owner))
        with contextlib.ExitStack() as stack:  # the units this module's weights live in, only
            for unit in units:
                stack.enter_context(self.FSDP.summon_full_params(unit, recurse=False, writeback=False))
            weight = pair.base_weight().detach().to("cpu", torch.float32, copy=True) if self.writes else None
        return weight

    def local(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # a parameter views exactly its part of this rank's slice: together, every element once
        return [t.detach().reshape(-1) if id(t) in self._owner else
                (t.detach() if self.rank == 0 else t.detach().new_empty(0)) for t in tensors]

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor | None:
        dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
        return tensor if self.writes else None


def _gather_joined(parts: list[torch.Tensor], rank: int, world: int) -> list[torch.Tensor] | None:
    """1-D tensors of varying length on every rank → on rank 0, each one's parts joined in rank
    order (None elsewhere). Two collectives: the lengths, then the parts padded to one size."""
    if not parts:
        return [] if rank == 0 else None
    sample = parts[0]
    counts = torch.tensor([t.numel() for t in parts], dtype=torch.int64, device=sample.device)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    totals = [int(c.sum()) for c in all_counts]
    flat = torch.zeros(max(totals), dtype=torch.float32, device=sample.device)
    flat[:totals[rank]] = torch.cat([t.float() for t in parts])
    stacked = torch.empty(world, max(totals), dtype=flat.dtype, device=flat.device) if rank == 0 else None
    dist.gather(flat, gather_list=list(stacked.unbind(0)) if stacked is not None else None, dst=0)
    if stacked is None:
        return None
    pieces = [stacked[r].split(all_counts[r].tolist() + [max(totals) - totals[r]])[:len(parts)] for r in range(world)]
    return [torch.cat([pieces[r][i] for r in range(world)]) for i in range(len(parts))]


GATHERS.register("fsdp1")(GatherKind(
    _detects, Fsdp1Gather,
    "FSDP1 (FullyShardedDataParallel, use_orig_params=True): summon_full_params per FSDP unit"))
