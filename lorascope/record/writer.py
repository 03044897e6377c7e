"""The background writer: the training thread's messages (``messages.py``: captured host
buffers, scalars, commits) go through a bounded queue to one daemon thread that owns the
``RecordingFile``, so the training thread never waits on disk."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Any

from lorascope.errors import RecordingError
from lorascope.h5.file import RecordingFile
from lorascope.record.capture import TORCH_DTYPES, FlatLayout, HostRing
from lorascope.record.messages import Capture, Close, Commit, Scalars
from lorascope.record.updates import HostUpdateNorms

__all__ = ["WriterThread"]


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
        self._captures = {  # by Capture.kind
            "weights": self._on_weights,
            "grads": lambda m: file.write_grads(m.step, m.micro_step, m.loss_scale, m.slot.arrays),
            "state": lambda m: file.write_state(m.step, m.slot.arrays),
            "norms": lambda m: file.add_update_norms(m.step, m.slot.arrays[0]),
            "magnitudes": lambda m: file.write_magnitudes(m.slot.arrays),
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
            self._queue.put(Close(status))
            self._thread.join()
        else:  # the thread died and closed the file after its error
            self.file.close_after_error()

    def _on_weights(self, msg: Capture) -> None:
        if msg.store:
            self._write_snapshot(msg)
        if msg.norms:
            self._track_norms(msg)

    def _write_snapshot(self, msg: Capture) -> None:
        storage = TORCH_DTYPES[self.file.layout.storage_dtype]
        if msg.slot.tensor.dtype == storage:
            self._write(msg)
        else:  # a float32 copy (it serves the update norms too): rounded here, not in training
            if self._rounded is None:
                shapes = [tuple(v.shape) for v in msg.slot.views]
                self._rounded = HostRing(FlatLayout(tuple(shapes)), storage, 1, pin=False)
            slot = self._rounded.acquire(self.alive)
            try:
                slot.tensor.copy_(msg.slot.tensor)
                self._write(replace(msg, slot=slot))
            finally:
                self._rounded.release(slot)

    def _write(self, msg: Capture) -> None:
        self.file.write_snapshot(msg.step, msg.micro_step, msg.time, msg.slot.arrays)

    def _track_norms(self, msg: Capture) -> None:
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
                if isinstance(msg, Close):
                    self.file.close(msg.status)
                    return
                if isinstance(msg, Commit):
                    self.file.commit()
                    self._steps_since_commit = 0
                    last_commit = time.monotonic()
                    if msg.done is not None:
                        msg.done.set()
                    continue
                if isinstance(msg, Capture):
                    try:
                        if msg.event is not None:
                            msg.event.synchronize()
                        self._captures[msg.kind](msg)
                    finally:
                        msg.release(msg.slot)
                elif isinstance(msg, Scalars):
                    self._on_scalars(msg)
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
            if isinstance(msg, Capture):
                msg.release(msg.slot)
