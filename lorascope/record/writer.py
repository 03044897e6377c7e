"""The background writer: the training thread's messages (captured host buffers, scalars,
commits) go through a bounded queue to one daemon thread that owns the ``RecordingFile``, so the
training thread never waits on disk."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from lorascope.errors import RecordingError
from lorascope.h5.file import RecordingFile
from lorascope.record.capture import TORCH_DTYPES, FlatLayout, HostRing
from lorascope.record.updates import HostUpdateNorms

__all__ = [
    "WriterThread", "Snapshot", "Grads", "State", "Updates", "Weights", "Scalars", "Commit", "NORM_ROLES",
    "Magnitudes",
]


# What a host copy of the weights does for the update norms (computed on the writer thread,
# see updates.py): nothing, start the series, or end the update of its step.
NORM_ROLES = ("", "baseline", "update")


# Messages from the training thread. slot/event/release come from capture.Channel.
@dataclass
class Snapshot:
    step: int
    micro_step: int
    time: float
    slot: Any
    event: Any
    release: Callable
    norms: str = ""  # one of NORM_ROLES; such a slot is float32 (an exact copy of the weights)


@dataclass
class Grads:
    step: int
    micro_step: int
    loss_scale: float
    slot: Any
    event: Any
    release: Callable


@dataclass
class State:
    step: int
    slot: Any
    event: Any
    release: Callable


@dataclass
class Magnitudes:
    """DoRA's magnitude vectors (float32) for the snapshot sent right after this message."""

    slot: Any
    event: Any
    release: Callable


@dataclass
class Updates:
    step: int
    slot: Any  # one (modules, 4) float32 view
    event: Any
    release: Callable


@dataclass
class Weights:
    """A float32 host copy of the weights after optimizer step ``step`` that is not stored:
    it only carries the update norms of a step that the schedule does not snapshot."""

    step: int
    slot: Any
    event: Any
    release: Callable
    norms: str = "update"  # "baseline" or "update"


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
class _Close:
    status: str



class WriterThread:
    """Owns a RecordingFile on a daemon thread. ``put`` blocks while the queue is full (the
    training thread waits rather than memory growing); an error on the thread is kept and
    raised to the training thread at its next ``put``."""

    def __init__(self, file: RecordingFile, queue_size: int, flush_every_steps: int,
                 flush_every_seconds: float) -> None:
        self.file = file
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, queue_size))
        self._flush_steps = max(1, flush_every_steps)
        self._flush_seconds = flush_every_seconds if flush_every_seconds > 0 else float("inf")
        self.error: BaseException | None = None
        self._norms = HostUpdateNorms()
        self._rounded: HostRing | None = None  # the storage-dtype buffer of a float32 snapshot
        self._handlers = {
            Snapshot: self._on_snapshot,
            Weights: self._track_norms,
            Grads: lambda m: file.write_grads(m.step, m.micro_step, m.loss_scale, m.slot.arrays),
            State: lambda m: file.write_state(m.step, m.slot.arrays),
            Magnitudes: lambda m: file.write_magnitudes(m.slot.arrays),
            Updates: lambda m: file.add_update_norms(m.step, m.slot.arrays[0]),
            Scalars: self._on_scalars,
        }
        self._steps_since_commit = 0
        self._thread = threading.Thread(target=self._run, name="lorascope-writer", daemon=True)
        self._thread.start()

    def pending(self) -> int:
        return self._queue.qsize()

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def put(self, msg: Any) -> None:
        while True:
            self.raise_error()
            try:
                self._queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        if self.error is not None:
            raise RecordingError(
                f"writing the recording {self.file.path} failed: {self.error}; free disk space "
                "or choose another output path and rerun"
            ) from self.error

    def close(self, status: str) -> None:
        """Drains the queue, commits, writes the final status and closes the file."""
        if self._thread.is_alive():
            self._queue.put(_Close(status))
            self._thread.join()
        else:  # the thread died and closed the file after its error
            self.file.close_after_error()

    def _on_snapshot(self, msg: Snapshot) -> None:
        storage = TORCH_DTYPES[self.file.layout.storage_dtype]
        if msg.slot.tensor.dtype == storage:
            self._write_snapshot(msg)
        else:  # a float32 copy (it serves the update norms too): rounded here, not in training
            if self._rounded is None:
                shapes = [tuple(v.shape) for v in msg.slot.views]
                self._rounded = HostRing(FlatLayout(tuple(shapes)), storage, 1, pin=False)
            slot = self._rounded.acquire(self.alive)
            try:
                slot.tensor.copy_(msg.slot.tensor)
                self._write_snapshot(replace(msg, slot=slot))
            finally:
                self._rounded.release(slot)
        if msg.norms:
            self._track_norms(msg)

    def _write_snapshot(self, msg: Snapshot) -> None:
        self.file.write_snapshot(msg.step, msg.micro_step, msg.time, msg.slot.arrays)

    def _track_norms(self, msg: Snapshot | Weights) -> None:
        if msg.norms == "baseline":
            self._norms.baseline(msg.slot.tensor, msg.slot.views)
        elif msg.norms == "update":
            self.file.add_update_norms(msg.step, self._norms.update(msg.slot.tensor, msg.slot.views))
        else:
            raise ValueError(f"unknown update-norm role {msg.norms!r}")  # a Recorder bug

    def _on_scalars(self, msg: Scalars) -> None:
        self.file.add_scalars(msg.step, msg.values, msg.optimizer_step)
        self._steps_since_commit += int(msg.optimizer_step)

    def _run(self) -> None:
        last_commit = time.monotonic()
        try:
            while True:
                timeout = max(0.05, self._flush_seconds - (time.monotonic() - last_commit))
                try:
                    msg = self._queue.get(timeout=min(timeout, 3600.0))
                except queue.Empty:
                    msg = None
                if isinstance(msg, _Close):
                    self.file.close(msg.status)
                    return
                if isinstance(msg, Commit):
                    self.file.commit()
                    self._steps_since_commit = 0
                    last_commit = time.monotonic()
                    if msg.done is not None:
                        msg.done.set()
                    continue
                if msg is not None:
                    release = getattr(msg, "release", None)
                    try:
                        if getattr(msg, "event", None) is not None:
                            msg.event.synchronize()
                        self._handlers[type(msg)](msg)
                    finally:
                        if release is not None:
                            release(msg.slot)
                due_time = time.monotonic() - last_commit >= self._flush_seconds
                if self._steps_since_commit >= self._flush_steps or due_time:
                    self.file.commit()
                    self._steps_since_commit = 0
                    last_commit = time.monotonic()
        except BaseException as exc:  # kept for the training thread; the file stays readable
            self.error = exc
            self._drain_after_error()
            self.file.close_after_error()

    def _drain_after_error(self) -> None:
        """Returns queued slots to their rings so that nothing waits on a dead writer."""
        while True:
            try:
                msg = self._queue.get_nowait()
            except queue.Empty:
                return
            release = getattr(msg, "release", None)
            if release is not None:
                release(msg.slot)
