"""Copying tensors off the training thread's hands, fast: every recorded tensor goes into views
of one preallocated flat host buffer with a single ``torch._foreach_copy_`` (dtype conversion
included). Buffers come from a fixed ring, so memory is bounded: when the writer falls behind,
``acquire`` waits (back-pressure) instead of allocating.

On CUDA the copy is device → device staging buffer on the training stream (microseconds), then
staging → pinned host on a side stream with ``non_blocking=True``; the writer thread waits on the
side stream's event, never the training thread."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from lorascope.errors import RecordingError
from lorascope.record.messages import Capture

__all__ = ["FlatLayout", "Slot", "HostRing", "Channel", "TORCH_DTYPES"]

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class FlatLayout:
    """Where each tensor of a list lives inside one flat buffer."""

    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def offsets(self) -> list[int]:
        out, at = [], 0
        for n in self.sizes:
            out.append(at)
            at += n
        return out

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def views(self, flat):
        """Views (torch or numpy) of ``flat`` shaped like each tensor, in order."""
        return [flat[o:o + n].reshape(s) for o, n, s in zip(self.offsets, self.sizes, self.shapes)]


@dataclass
class Slot:
    index: int
    tensor: torch.Tensor  # flat, storage dtype, host
    array: np.ndarray  # the same memory as numpy (bfloat16 seen as uint16 bits)
    views: list[torch.Tensor] = field(repr=False)
    arrays: list[np.ndarray] = field(repr=False)


def _numpy_view(flat: torch.Tensor) -> np.ndarray:
    if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: hand over the bits
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()


class HostRing:
    """A fixed set of host buffers handed out and returned. ``acquire`` blocks while all are
    out; ``alive`` lets it give up with an error when the writer has died instead of hanging."""

    def __init__(self, layout: FlatLayout, dtype: torch.dtype, slots: int, pin: bool) -> None:
        self.layout = layout
        self._free: list[Slot] = []
        self._cond = threading.Condition()
        for i in range(slots):
            flat = torch.empty(layout.numel, dtype=dtype, pin_memory=pin)
            array = _numpy_view(flat)
            self._free.append(Slot(i, flat, array, layout.views(flat), layout.views(array)))

    def acquire(self, alive: Callable[[], bool]) -> Slot:
        with self._cond:
            while not self._free:
                if not alive():
                    raise RecordingError(
                        "the recording writer stopped; see the error above, fix it and rerun"
                    )
                self._cond.wait(timeout=0.5)
            return self._free.pop()

    def release(self, slot: Slot) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()


class Channel:
    """One kind of capture (weights, gradients, optimizer state, update norms): a layout, a host
    ring in the storage dtype, and on CUDA a staging buffer and a side stream."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtype: torch.dtype,
                 device: torch.device, slots: int) -> None:
        self.layout = FlatLayout(tuple(tuple(s) for s in shapes))
        self.cuda = device.type == "cuda"
        self.ring = HostRing(self.layout, dtype, slots, pin=self.cuda)
        if self.cuda:
            self._staging = torch.empty(self.layout.numel, dtype=dtype, device=device)
            self._staging_views = self.layout.views(self._staging)
            self._stream = torch.cuda.Stream(device=device)
            self._staging_free: torch.cuda.Event | None = None

    def capture(self, tensors: Sequence[torch.Tensor], alive: Callable[[], bool]):
        """Copies ``tensors`` into a free slot; returns (slot, event or None). The slot's data
        is valid once the event has completed."""
        slot = self.ring.acquire(alive)
        if not self.cuda:
            torch._foreach_copy_(slot.views, list(tensors))
            return slot, None
        main = torch.cuda.current_stream()
        if self._staging_free is not None:  # the previous host copy must have read staging
            main.wait_event(self._staging_free)
        torch._foreach_copy_(self._staging_views, list(tensors))
        staged = torch.cuda.Event()
        staged.record(main)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(staged)
            slot.tensor.copy_(self._staging, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        self._staging_free = done
        return slot, done

    def take(self, kind: str, step: int, tensors: Sequence[torch.Tensor], alive: Callable[[], bool],
             **fields) -> Capture:
        """Copies ``tensors`` (see ``capture``) and wraps the copy as the writer's message."""
        slot, event = self.capture(tensors, alive)
        return Capture(kind, step, slot, event, self.ring.release, **fields)
