"""The per-step update norms (``/updates/norms``) of a sharded run, without a collective per step.

A Frobenius norm is the square root of a sum of squares, and a sum splits over the ranks' parts
of a matrix. So every rank keeps, for each optimizer step, the squared norms of its own part of
every ΔA, ΔB, A and B, a (modules, 4) row computed on its device; at a snapshot step (and at the
end of a complete run) one ``reduce`` sums the rows of all steps since the last one onto rank 0,
which takes the square roots and hands one row per step to the writer. The rows of the steps
after the last snapshot of a run that crashes are lost with it, as its scalars after the last
commit are."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from lorascope.record.gather import Gather
from lorascope.record.updates import norm_rows

__all__ = ["ShardedUpdateNorms", "RowSlot", "keep_slot"]


@dataclass
class RowSlot:
    """A reduced (modules, 4) row in the shape of a capture slot, for the writer's ``Updates``."""

    arrays: list[np.ndarray] = field(default_factory=list)


def keep_slot(slot: RowSlot) -> None:
    """The writer releases a slot after writing it; a row owns its memory, so nothing to do."""


class ShardedUpdateNorms:
    """One per rank, called alike on every rank: ``update`` after each optimizer step (local
    arithmetic only), ``reduce`` at snapshot steps (one collective)."""

    def __init__(self, gather: Gather, params: Sequence[torch.Tensor]) -> None:
        self._gather = gather
        with torch.no_grad():
            self._prev = [t.clone() for t in gather.local(params)]
        self._steps: list[int] = []
        self._rows: list[torch.Tensor] = []

    def update(self, step: int, params: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            local = self._gather.local(params)
            # in place: prev becomes prev - new (its norm is new - prev's), then new
            torch._foreach_sub_(self._prev, local)
            deltas = torch._foreach_norm(self._prev)
            weights = torch._foreach_norm(local)
            torch._foreach_copy_(self._prev, local)
            self._rows.append(norm_rows(deltas, weights).double().square())
        self._steps.append(int(step))

    def reduce(self) -> list[tuple[int, np.ndarray]]:
        """The (step, (modules, 4) float32 norms) rows since the last call, on rank 0; [] on the
        other ranks and when no step ran since."""
        if not self._rows:  # the same on every rank: each has run the same steps
            return []
        squares = self._gather.reduce(torch.stack(self._rows))  # (steps, modules, 4)
        steps, self._steps, self._rows = self._steps, [], []
        if squares is None:
            return []
        norms = squares.sqrt().float().cpu().numpy()
        return list(zip(steps, norms))
