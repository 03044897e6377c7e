"""What the training thread tells the writer thread: one ``Capture`` per host copy it made
(weights, gradients, optimizer state, update norms: which one is its ``kind``), ``Scalars`` for
the per-step numbers, ``Commit`` to make everything sent so far visible, ``Close`` to finish."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Capture", "CAPTURE_KINDS", "NORM_ROLES", "Scalars", "Commit", "Close"]

# weights: A and B of every pair (a snapshot, or only the update norms' copy, see `store`);
# grads: one micro-batch's gradients; state: the optimizer's tensors for A and B;
# norms: a (pairs, 4) row of update norms computed on the device; magnitudes: DoRA's magnitude
# vectors (float32) for the weights snapshot sent right after them.
CAPTURE_KINDS = ("weights", "grads", "state", "norms", "magnitudes")

# What a host copy of the weights does for the update norms computed on the writer thread
# (record/updates.py): nothing, start the series, or end the update of its step.
NORM_ROLES = ("", "baseline", "update")


@dataclass
class Capture:
    """A host copy made by a ``capture.Channel``: its data is valid once ``event`` (a CUDA event,
    or None on CPU) has completed, and ``release(slot)`` hands the buffer back to its ring."""

    kind: str  # one of CAPTURE_KINDS
    step: int  # the optimizer step the copy belongs to
    slot: Any
    event: Any
    release: Callable[[Any], None]
    micro_step: int = -1  # weights and grads: the micro-step counter when the copy was made
    time: float = 0.0  # weights: seconds since the run started
    loss_scale: float = 1.0  # grads: the scale already divided out
    store: bool = True  # weights: False for a copy that only carries the update norms
    norms: str = ""  # weights: one of NORM_ROLES; such a slot is float32 (an exact copy)


@dataclass
class Scalars:
    step: int
    values: dict[str, float]
    optimizer_step: bool = True  # counts toward flush_every_steps


@dataclass
class Commit:
    """Makes everything sent so far visible now, whatever the flush interval; sets ``done``
    (a threading.Event) once it is on disk."""

    done: Any = None


@dataclass
class Close:
    status: str
