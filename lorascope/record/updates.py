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
``format.UPDATE_COLUMNS``.

Which of the two a Recorder uses is a small strategy object, ``NormsOnHost`` or ``NormsOnDevice``
(``norm_place`` picks one): it says in which dtype the weights are copied, and which messages
start the series and carry each step's update."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from lorascope.errors import UsageError
from lorascope.record.capture import Channel
from lorascope.record.messages import Capture

__all__ = ["HostUpdateNorms", "DeviceUpdateNorms", "norm_rows", "NormsOnHost", "NormsOnDevice",
           "UPDATE_NORM_PLACES", "norm_place"]


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


# --- where a Recorder computes them ----------------------------------------------------------

class NormsOnHost:
    """The writer thread computes the norms (``HostUpdateNorms``) from float32 host copies of the
    weights: the snapshot of a step the schedule records, otherwise a copy made for the norms
    alone. The training thread pays one copy per step and nothing else. The writer rounds a
    float32 snapshot to the storage dtype, the same rounding the copy itself would do."""

    name = "host"

    def weights_dtype(self, storage: torch.dtype) -> torch.dtype:
        return torch.float32  # the stored copy doubles as an exact one for the norms

    def start(self, params: Sequence[torch.Tensor], weights: Channel, slots: int,
              as_matrices: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        """``as_matrices`` turns the parameters into the matrices the weights channel holds."""
        self._params, self._weights, self._as_matrices = list(params), weights, as_matrices

    def snapshot_role(self, role: str) -> str:
        return role  # a snapshot's copy starts the series or ends a step's update

    def baseline(self, step: int, alive: Callable[[], bool]) -> Capture | None:
        """Starts the series at the current weights when no snapshot does (resuming at a step
        the file already holds)."""
        return self._copy(step, "baseline", alive)

    def update(self, step: int, snapshotted: bool, alive: Callable[[], bool]) -> Capture | None:
        """The update of optimizer step ``step``; None when that step's snapshot carries it."""
        return None if snapshotted else self._copy(step, "update", alive)

    def finish(self, alive: Callable[[], bool]) -> None:
        return None  # every step's norms were sent as it ended

    def _copy(self, step: int, role: str, alive: Callable[[], bool]) -> Capture:
        with torch.no_grad():
            return self._weights.take("weights", step, self._as_matrices([t.detach() for t in self._params]),
                                      alive, store=False, norms=role)


class NormsOnDevice:
    """The training thread computes the norms on the parameters' device (``DeviceUpdateNorms``,
    which keeps the previous weights there) and hands a (pairs, 4) row to the writer; snapshots
    stay in the storage dtype and carry nothing for the norms."""

    name = "device"

    def weights_dtype(self, storage: torch.dtype) -> torch.dtype:
        return storage

    def start(self, params: Sequence[torch.Tensor], weights: Channel, slots: int,
              as_matrices: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        # norms are taken of the parameters themselves: a matrix view (a transpose, a reshape)
        # has the same Frobenius norm
        self._params = list(params)
        self._norms = DeviceUpdateNorms(self._params)  # the series starts at these weights
        device = self._params[0].device
        self._rows = Channel([(len(self._params) // 2, 4)], torch.float32, device, 2 * slots)

    def snapshot_role(self, role: str) -> str:
        return ""

    def baseline(self, step: int, alive: Callable[[], bool]) -> Capture | None:
        return None  # start() kept the weights on the device

    def update(self, step: int, snapshotted: bool, alive: Callable[[], bool]) -> Capture:
        norms = self._norms.update(self._params)
        with torch.no_grad():
            return self._rows.take("norms", step, [norms], alive)

    def finish(self, alive: Callable[[], bool]) -> None:
        return None  # every step's norms were sent as it ended


# "auto": by the parameters' device: on CPU the host path (the training thread only copies),
# on a GPU the device path (its fused kernels beat moving every step's weights to the host).
UPDATE_NORM_PLACES: dict[str, type | None] = {"auto": None, "host": NormsOnHost, "device": NormsOnDevice}


def norm_place(choice: str, device: torch.device) -> NormsOnHost | NormsOnDevice:
    if choice not in UPDATE_NORM_PLACES:
        raise UsageError(f"update_norms must be one of {', '.join(UPDATE_NORM_PLACES)} (got {choice!r})")
    place = UPDATE_NORM_PLACES[choice] or (NormsOnHost if device.type == "cpu" else NormsOnDevice)
    return place()
