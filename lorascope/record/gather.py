"""Reading recorded tensors whole when training shards them.

Under FSDP2, FSDP1 or DeepSpeed ZeRO-3 each rank holds only a shard of every LoRA matrix, of its
gradient and of its optimizer moments. The Recorder reads all of them through one ``Gather``,
chosen for the model from the registry ``GATHERS`` (first kind that detects the model wins,
``plain`` otherwise):

==========  ==============================  ==========================================================
kind        detected by                     a snapshot gathers with
==========  ==============================  ==========================================================
``zero3``   parameters carrying ``ds_id``   DeepSpeed's ``safe_get_full_fp32_param``, ``safe_get_full_grad``,
                                            ``safe_get_full_optimizer_state`` (one all-gather per tensor)
``fsdp1``   ``FullyShardedDataParallel``    ``summon_full_params(unit, with_grads=...)``, one FSDP unit at a
            modules                         time; optimizer state through ``FSDP.optim_state_dict``
``fsdp2``   DTensor parameters              one ``gather`` of every rank's shards to rank 0 (``fully_shard``'s
            (``fully_shard``)               ``Shard(0)`` layout); ``full_tensor()`` for any other layout
``plain``   anything else                   nothing: every tensor is whole already
==========  ==============================  ==========================================================

The contract of a sharded gather (``sharded`` is True): every rank calls each method, in the same
order, because each is a collective; rank 0 gets the full tensors and the other ranks ``None``,
which drop their part at once. The Recorder calls them at recording steps only: a step without a
snapshot costs no collective (its update norms are kept per rank from ``local`` shards and summed
by one ``reduce`` at the next snapshot, see ``sharded_norms``)."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch

from lorascope.lora.pairs import LoraPair
from lorascope.registry import Registry

__all__ = ["Gather", "PlainGather", "GatherKind", "GATHERS", "gather_kind", "gather_for", "is_sharded",
           "state_tensor_keys"]

# a (param, key) entry of optimizer state: the moment ``key`` of parameter ``param``
StateEntry = tuple[torch.Tensor, str]


class Gather:
    """The plain gather, and the interface of the sharded ones: every tensor is whole on every
    rank, so nothing is exchanged and every rank that records writes."""

    name = "plain"
    sharded = False  # True: the methods are collectives that every rank must call alike

    @property
    def writes(self) -> bool:
        """Whether this rank writes the file (the others only join the gathers)."""
        return True

    def discovery(self) -> ContextManager:
        """A context in which the LoRA parameters have their full shapes, for finding the pairs."""
        return contextlib.nullcontext()

    def bind(self, pairs: dict[str, LoraPair]) -> None:
        """Learns the pairs that are recorded (once, after discovery, on every rank)."""

    def shape(self, tensor: torch.Tensor) -> tuple[int, ...]:
        """The full shape of a (possibly sharded) parameter or state tensor."""
        return tuple(tensor.shape)

    def weights(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """The full values of ``tensors`` (parameters: A, B, DoRA magnitudes)."""
        return [t.detach() for t in tensors]

    def grads(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """The full accumulated ``.grad`` of ``params`` (zeros where a parameter has none)."""
        return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]

    def state_keys(self, optimizer: Any, param: torch.Tensor) -> list[str]:
        """The optimizer's moment names for ``param`` (floating, not 0-d), after its first step."""
        return state_tensor_keys(optimizer.state.get(param, {}))

    def state(self, optimizer: Any, entries: Sequence[StateEntry]) -> list[torch.Tensor] | None:
        """The full optimizer-state tensors of ``entries``, each shaped like its parameter. A
        missing entry raises KeyError."""
        return [optimizer.state[p][k].detach() for p, k in entries]

    def base_weight(self, pair: LoraPair) -> torch.Tensor | None:
        """The pair's W0 as a float32 (out, in) tensor on the CPU."""
        return pair.base_weight().detach().to("cpu", torch.float32)

    def local(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's part of each tensor, such that the parts of all ranks together hold every
        element once: the sums of squares of the parts add up to the whole's."""
        return [t.detach() for t in tensors]

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The sum of ``tensor`` over ranks, on rank 0."""
        return tensor


PlainGather = Gather


def state_tensor_keys(state: dict) -> list[str]:
    # 0-d entries (the step count) are already in /state_snapshots/step
    return sorted(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0)


@dataclass(frozen=True)
class GatherKind:
    detects: Callable[[torch.nn.Module], bool]  # cheap, and imports nothing the model does not use
    build: Callable[[torch.nn.Module], Gather]  # on every rank, at the same point
    description: str


GATHERS: Registry[GatherKind] = Registry("gather")
_PROVIDERS = ("lorascope.record.gather_zero", "lorascope.record.gather_fsdp1", "lorascope.record.gather_fsdp")


def _load_providers() -> None:
    """The sharded kinds register themselves on import; they import their frameworks lazily."""
    import importlib

    for module in _PROVIDERS:
        importlib.import_module(module)


GATHERS.register("plain")(GatherKind(lambda model: False, lambda model: Gather(),
                                     "unsharded tensors: nothing to gather"))


def gather_kind(model: torch.nn.Module) -> str:
    """The name of the gather that fits ``model``: the first registered kind that detects it."""
    _load_providers()
    for name in GATHERS.names():
        if GATHERS.get(name).detects(model):
            return name
    return "plain"


def gather_for(model: torch.nn.Module) -> Gather:
    """The gather for ``model``; under sharding, called on every rank at the same point."""
    return GATHERS.get(gather_kind(model)).build(model)


def is_sharded(model: Any) -> bool:
    """Whether ``model``'s parameters are sharded (so every rank must join the Recorder's gathers)."""
    return isinstance(model, torch.nn.Module) and gather_kind(model) != "plain"


def loaded(module: str) -> Any:
    """A module if the process imported it already, else None: a model sharded by a framework
    has imported it, and detection must not import one (DeepSpeed takes seconds)."""
    return sys.modules.get(module)
