"""The per-step update norms (``/updates/norms``): for every LoRA pair, ‖ΔA‖, ‖ΔB‖, ‖A‖ and ‖B‖
after each optimizer step, where Δ is the change since the previous optimizer step.

Two places can compute them, with the same arithmetic (an element-wise difference, then one
Frobenius norm per matrix, in the matrices' own dtype):

* ``HostUpdateNorms`` runs on the writer thread, from host copies of the weights: the snapshot the
  Recorder captured anyway when the step is recorded, or a plain float32 copy when it is not. The
  training thread then pays one copy per step and nothing else. This is the path on CPU, where
  the norms otherwise cost the training thread several copies' worth of passes over the weights.
* ``DeviceUpdateNorms`` runs on the training thread, on the parameters' device, and hands over a
  (modules, 4) tensor. On a GPU the fused ``_foreach`` kernels make that cheaper than moving all
  weights to the host every step.

Both take tensors in pair order (A0, B0, A1, B1, ...) and return rows in the order of
``format.UPDATE_COLUMNS``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["HostUpdateNorms", "DeviceUpdateNorms", "norm_rows"]


def norm_rows(deltas: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """(modules, 4) float32 from per-matrix norms in pair order, columns as UPDATE_COLUMNS."""
    d = torch.stack(list(deltas)).view(-1, 2)  # row i: ‖ΔA_i‖, ‖ΔB_i‖
    w = torch.stack(list(weights)).view(-1, 2)
    return torch.cat([d, w], dim=1).float()


class HostUpdateNorms:
    """Keeps the previous step's host copy (one flat float32 buffer) and turns each new copy
    into a norms row. Not thread-safe: the writer thread alone uses it."""

    def __init__(self) -> None:
        self._prev: torch.Tensor | None = None
        self._prev_views: list[torch.Tensor] = []

    @property
    def has_baseline(self) -> bool:
        return self._prev is not None

    def baseline(self, flat: torch.Tensor, views: Sequence[torch.Tensor]) -> None:
        """Remembers the weights that the next update starts from."""
        if self._prev is None or self._prev.shape != flat.shape:
            self._prev = torch.empty_like(flat)
            # the same split as the incoming buffer (every slot of a ring has the same layout)
            starts = [v.storage_offset() - flat.storage_offset() for v in views]
            self._prev_views = [self._prev[o:o + v.numel()].view(v.shape) for o, v in zip(starts, views)]
        self._prev.copy_(flat)

    def update(self, flat: torch.Tensor, views: Sequence[torch.Tensor]) -> np.ndarray:
        """The norms of the step that produced ``flat``, relative to the last baseline or update;
        ``flat`` becomes the next baseline."""
        if self._prev is None:
            raise RuntimeError("update norms need a baseline first")  # a Recorder bug, not user input
        # one pass over the flat buffer instead of one kernel per matrix; prev - new has the
        # norm of new - prev
        torch.sub(self._prev, flat, out=self._prev)
        deltas = torch._foreach_norm(self._prev_views)
        weights = torch._foreach_norm(list(views))
        self._prev.copy_(flat)
        return norm_rows(deltas, weights).numpy()


class DeviceUpdateNorms:
    """Keeps a copy of the parameters on their device and computes the norms there."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            self._prev = [t.detach().clone() for t in params]

    def update(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            params = [t.detach() for t in params]
            # in place: prev becomes prev - new (no temporary the size of all weights), then new
            torch._foreach_sub_(self._prev, params)
            deltas = torch._foreach_norm(self._prev)
            weights = torch._foreach_norm(params)
            torch._foreach_copy_(self._prev, params)
            return norm_rows(deltas, weights)
