"""DeepSpeed ZeRO stage 3: every parameter is an empty placeholder (``shape`` (0,), the real one in
``ds_shape``) whose values live partitioned across ranks, and the optimizer keeps fp32 master
weights and moments in flat partitions. DeepSpeed's own accessors assemble one parameter's
full fp32 weight, gradient or moment with an all-gather that every rank must join (they hang
otherwise): weights after ``engine.step()``, gradients between ``engine.backward()`` and it."""
from __future__ import annotations

from typing import Any, ContextManager, Sequence

import torch
import torch.distributed as dist

from lorascope.lora.pairs import LoraPair
from lorascope.record.gather import GATHERS, Gather, GatherKind, StateEntry, loaded, state_tensor_keys

__all__ = ["Zero3Gather"]


def _detects(model: torch.nn.Module) -> bool:
    return loaded("deepspeed") is not None and any(hasattr(p, "ds_id") for p in model.parameters())


def _partitioned(t: torch.Tensor) -> bool:
    return hasattr(t, "ds_id")


class Zero3Gather(Gather):
    name = "zero3"
    sharded = True

    def __init__(self, model: torch.nn.Module) -> None:
        import deepspeed
        from deepspeed import utils

        self._zero, self._utils = deepspeed.zero, utils
        self.model = model
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def writes(self) -> bool:
        return self.rank == 0

    def discovery(self) -> ContextManager:
        # the trainable parameters only (LoRA, a few more): never the frozen base
        return self._zero.GatheredParameters([p for p in self.model.parameters() if p.requires_grad])

    def shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        return tuple(tensor.ds_shape) if _partitioned(tensor) else tuple(tensor.shape)

    def weights(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        return self._keep([self._weight(t) for t in tensors])

    def _weight(self, t: torch.Tensor) -> torch.Tensor:
        if not _partitioned(t):
            return t.detach()
        if t.requires_grad:  # the optimizer's fp32 master copy: what the next step starts from
            return self._utils.safe_get_full_fp32_param(t)
        with self._zero.GatheredParameters([t]):  # frozen (LoRA-FA's A): no master copy exists
            return t.detach().clone()

    def grads(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        full = []
        for p in params:
            grad = self._utils.safe_get_full_grad(p) if _partitioned(p) and p.requires_grad else p.grad
            full.append(grad.detach() if grad is not None else torch.zeros(self.shape(p), device=p.device))
        return self._keep(full)

    def state_keys(self, optimizer: Any, param: torch.Tensor) -> list[str]:
        if not _partitioned(param):
            return state_tensor_keys(optimizer.state.get(param, {}))
        # the moments live on the flat fp32 partitions of the inner optimizer, alike on every rank
        inner = getattr(optimizer, "optimizer", optimizer)
        keys: set[str] = set()
        for state in inner.state.values():
            keys.update(state_tensor_keys(state))
        return sorted(keys) if param.requires_grad else []

    def state(self, optimizer: Any, entries: Sequence[StateEntry]) -> list[torch.Tensor] | None:
        full = []
        for p, key in entries:
            value = (self._utils.safe_get_full_optimizer_state(p, key) if _partitioned(p)
                     else optimizer.state[p][key])
            if value is None:
                raise KeyError(key)
            full.append(value.detach().view(self.shape(p)))
        return self._keep(full)

    def base_weight(self, pair: LoraPair) -> torch.Tensor | None:
        module = _module_of(self.model, pair)
        with self._zero.GatheredParameters(list(module.parameters())):  # one module at a time
            weight = pair.base_weight().detach().to("cpu", torch.float32, copy=True)
        return weight if self.writes else None

    def local(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self._local(t) for t in tensors]

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        if not _partitioned(t):
            return t.detach() if self.rank == 0 else t.detach().new_empty(0)
        part = self._utils.safe_get_local_fp32_param(t) if t.requires_grad else None
        part = (part if part is not None else t.ds_tensor).detach().reshape(-1)
        # the last partitions are padded up to equal size: only ds_numel elements are the tensor's
        valid = max(0, min(part.numel(), t.ds_numel - self.rank * part.numel()))
        return part[:valid]

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor | None:
        dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
        return tensor if self.writes else None

    def _keep(self, tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
        return tensors if self.writes else None


def _module_of(model: torch.nn.Module, pair: LoraPair) -> torch.nn.Module:
    from lorascope.lora.pairs import unwrap_model

    return unwrap_model(model).get_submodule(pair.name)


GATHERS.register("zero3")(GatherKind(
    _detects, Zero3Gather,
    "DeepSpeed ZeRO-3: DeepSpeed's safe_get_full_* accessors, called on every rank"))
