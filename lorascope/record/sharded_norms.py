"""The per-step update norms (``/updates/norms``) of a sharded run, without a collective per step.

A Frobenius norm is the square root of a sum of squares, and a sum splits over the ranks' parts
of a matrix. So every rank keeps, for each optimizer step, the squared norms of its own part of
every ΔA, ΔB, A and B, a (modules, 4) row computed on its device; at a snapshot step (and at the
end of a complete run) one ``reduce`` sums the rows of all steps since the last one onto rank 0,
which takes the square roots and hands one row per step to the writer. The rows of the steps
after the last snapshot of a run that crashes are lost with it, as its scalars after the last
commit are.

``NormsOnShards`` is the Recorder's strategy for this (beside ``updates.NormsOnHost`` and
``NormsOnDevice``, with the same methods): snapshots carry nothing for the norms, and the summed
rows reach the writer as ``norms`` captures, several at once."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from lorascope.record.capture import Channel
from lorascope.record.gather import Gather
from lorascope.record.messages import Capture
from lorascope.record.updates import norm_rows

__all__ = ["ShardedUpdateNorms", "NormsOnShards", "RowSlot", "keep_slot"]


@dataclass
class RowSlot:
    """A reduced (modules, 4) row in the shape of a capture slot, for a ``norms`` capture."""

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


class NormsOnShards:
    """The update-norm strategy of a sharded run (see ``updates.norm_place`` for the others):
    every rank keeps its shards' rows each step, and a snapshot step (or the end of a complete
    run) sums them once and sends rank 0's writer one ``norms`` capture per step."""

    name = "sharded"

    def __init__(self, gather: Gather) -> None:
        self._gather = gather

    def weights_dtype(self, storage: torch.dtype) -> torch.dtype:
        return storage  # snapshots carry nothing for the norms

    def start(self, params: Sequence[torch.Tensor], weights: Channel | None, slots: int,
              as_matrices: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        # norms of the parameters' shards: a matrix view has the same Frobenius norm
        self._params = list(params)
        self._norms = ShardedUpdateNorms(self._gather, self._params)  # the series starts here

    def snapshot_role(self, role: str) -> str:
        return ""

    def baseline(self, step: int, alive: Callable[[], bool]) -> None:
        return None  # start() kept each rank's shards

    def update(self, step: int, snapshotted: bool, alive: Callable[[], bool]) -> list[Capture] | None:
        """Local arithmetic every step; at a snapshot step one collective and the summed rows."""
        self._norms.update(step, self._params)
        return self.finish(alive) if snapshotted else None

    def finish(self, alive: Callable[[], bool]) -> list[Capture]:
        """The rows kept since the last snapshot, summed over ranks (a collective); [] off rank 0."""
        return [Capture("norms", step, RowSlot([row]), None, keep_slot) for step, row in self._norms.reduce()]
