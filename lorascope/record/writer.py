"""The HDF5 side of recording: creating the v1 layout, appending snapshots, and committing them
so that a snapshot is either fully readable or absent.

Commit protocol (what makes a killed run's file safe): data rows are written first, then the file
is flushed, and only then are the index datasets (``/snapshots/step`` and friends) extended and
flushed again. A reader takes its counts from the index datasets, so everything it can see was on
disk before the index pointed at it. The file is in SWMR mode from its creation, which is what
lets HDF5 open it after a crash (and while it is being written) without ``h5clear``.

``WriterThread`` runs the file on a background thread fed by a bounded queue."""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.record.format import (
    BF16_ENCODING,
    OTHER_NAME_BYTES,
    STATUS_BYTES,
    UPDATE_COLUMNS,
    numpy_storage_dtype,
)
from lorascope.record.capture import TORCH_DTYPES, FlatLayout, HostRing
from lorascope.record.updates import HostUpdateNorms

__all__ = [
    "ModuleSpec", "FileLayout", "RecordingFile", "WriterThread",
    "Snapshot", "Grads", "State", "Updates", "Weights", "Scalars", "Commit", "NORM_ROLES",
]


# --- what gets written -----------------------------------------------------------------------

# Bytes kept free for the last commit, the status and the close after a refused write: the
# index rows, attributes and metadata they add are a few KiB.
_CLOSE_MARGIN = 128 * 1024

@dataclass
class ModuleSpec:
    name: str
    attrs: dict[str, Any]
    a_shape: tuple[int, int]  # (rank, in)
    b_shape: tuple[int, int]  # (out, rank)
    w0: np.ndarray | None = None  # (out, in) float32
    # optimizer state: matrix ("A"/"B") -> [(key, shape)], in slot order
    state: dict[str, list[tuple[str, tuple[int, ...]]]] = field(default_factory=dict)


@dataclass
class FileLayout:
    root_attrs: dict[str, Any]
    modules: list[ModuleSpec]
    storage_dtype: str = "float32"
    compression: str = "none"
    grads: bool = False
    optimizer_state: bool = False
    scalar_columns: tuple[str, ...] = ()


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


# --- the file --------------------------------------------------------------------------------

class _Series:
    """An extendable (T, ...) dataset with one snapshot per chunk, appended to by row."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self.ds = ds
        self.id = ds.id
        self.tail = tuple(ds.shape[1:])
        self.zeros = (0,) * len(self.tail)
        # the chunk is exactly one snapshot in C order: write it as is, past HDF5's dataspace
        # machinery (twice as fast); compressed chunks go through the filter pipeline
        self.direct = ds.compression is None and ds.chunks == (1, *self.tail)

    def append(self, row: int, value: np.ndarray) -> None:
        self.id.set_extent((row + 1, *self.tail))
        if self.direct:
            self.id.write_direct_chunk((row, *self.zeros), np.ascontiguousarray(value))
        else:
            self.ds[row] = value


def _attr_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


class RecordingFile:
    """One recording open for writing. Not thread-safe: one thread at a time uses it."""

    def __init__(self, path: Path, layout: FileLayout,
                 seed: Callable[[h5py.File], dict[str, int]] | None = None) -> None:
        """Creates ``path`` with ``layout``. ``seed``, when given, fills the new file with rows
        before it goes live (resuming copies the old recording's rows) and returns how many
        snapshot, gradient and state rows it wrote."""
        self.path = Path(path)
        self.layout = layout
        self.modules = layout.modules
        self._pending: dict[str, list] = {"snapshots": [], "grads": [], "state": [], "updates": [],
                                          "scalars": [], "other": []}
        self.written = {"snapshots": 0, "grads": 0, "state": 0}
        self._abandoned = False  # set once a write failed: see close_after_error
        self._refused = False  # set when _ensure_room refused a write before HDF5 saw it
        self._handles: dict[str, list[_Series]] = {}
        try:
            self.f = h5py.File(self.path, "w", libver="latest")
        except OSError as exc:
            raise RecordingError(
                f"cannot create the recording {self.path}: {exc}; choose a writable output path"
            ) from None
        try:
            self._create()
            if seed is not None:
                self.written.update(seed(self.f))
            self.f.flush()
            # From here on the file cannot gain datasets, but it survives SIGKILL and can be read
            # while written.
            self.f.swmr_mode = True
        except BaseException:
            self.f.close()
            raise

    # creation -----------------------------------------------------------------------------
    def _data_kwargs(self) -> dict[str, Any]:
        codec = self.layout.compression
        if codec == "none":
            return {}
        return {"compression": codec, "compression_opts": 1 if codec == "gzip" else None,
                "shuffle": True}

    def _series(self, group: h5py.Group, name: str, shape: tuple[int, ...], dtype,
                stored: bool = True) -> h5py.Dataset:
        """An extendable dataset (T, *shape), one snapshot per chunk."""
        kwargs = self._data_kwargs() if stored and shape else {}
        ds = group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape),
                                  chunks=(1, *shape) if shape else (256,), dtype=dtype, **kwargs)
        if stored and self.layout.storage_dtype == "bfloat16" and dtype == numpy_storage_dtype("bfloat16"):
            ds.attrs["encoding"] = BF16_ENCODING
        return ds

    def _index(self, group: h5py.Group, name: str, dtype) -> None:
        group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,), dtype=dtype)

    def _create(self) -> None:
        f, layout = self.f, self.layout
        for key, value in layout.root_attrs.items():
            f.attrs[key] = _attr_value(value)
        f.attrs.create("status", np.bytes_(b"running"), dtype=f"S{STATUS_BYTES}")
        storage = numpy_storage_dtype(layout.storage_dtype)

        snaps = f.create_group("snapshots")
        for name, dtype in (("step", "i8"), ("micro_step", "i8"), ("time", "f8")):
            self._index(snaps, name, dtype)
        if layout.grads:
            grads = f.create_group("grad_snapshots")
            for name, dtype in (("step", "i8"), ("micro_step", "i8"), ("loss_scale", "f8")):
                self._index(grads, name, dtype)
        if layout.optimizer_state:
            self._index(f.create_group("state_snapshots"), "step", "i8")

        updates = f.create_group("updates")
        self._index(updates, "step", "i8")
        norms = self._series(updates, "norms", (len(self.modules), len(UPDATE_COLUMNS)), "f4",
                             stored=False)
        norms.attrs["columns"] = json.dumps(list(UPDATE_COLUMNS))

        scalars = f.create_group("scalars")
        self._index(scalars, "step", "i8")
        for name in layout.scalar_columns:
            self._index(scalars, name, "f8")
        other_type = np.dtype([("step", "<i8"), ("name", f"S{OTHER_NAME_BYTES}"), ("value", "<f8")])
        other = scalars.create_dataset("other", shape=(0,), maxshape=(None,), chunks=(256,),
                                       dtype=other_type)
        other.attrs["rows"] = np.int64(0)

        modules = f.create_group("modules", track_order=True)
        modules.attrs["order"] = json.dumps([m.name for m in self.modules])
        for spec in self.modules:
            g = modules.create_group(spec.name)
            for key, value in spec.attrs.items():
                g.attrs[key] = value
            self._series(g, "A", spec.a_shape, storage)
            self._series(g, "B", spec.b_shape, storage)
            if layout.grads:
                self._series(g, "grad_A", spec.a_shape, storage)
                self._series(g, "grad_B", spec.b_shape, storage)
            if spec.w0 is not None:
                g.create_dataset("W0", data=spec.w0.astype(np.float32), **self._data_kwargs())
            for matrix, entries in spec.state.items():
                sg = g.create_group(f"state_{matrix}")
                for key, shape in entries:
                    # moments span many orders of magnitude (exp_avg_sq ~1e-12): always float32
                    self._series(sg, key, shape, "f4", stored=False)

    # appending data rows ---------------------------------------------------------------------
    def _series_list(self, keys: list[str]) -> list["_Series"]:
        """Open handles, in slot order, so that appending makes no lookups: every h5py call
        takes the GIL back from the training thread, so the writer makes as few as it can."""
        out = []
        for spec in self.modules:
            g = self.f["modules"][spec.name]
            out.extend(_Series(g[k]) for k in keys)
        return out

    def _state_list(self) -> list["_Series"]:
        out = []
        for spec in self.modules:
            g = self.f["modules"][spec.name]
            for matrix, entries in spec.state.items():
                out.extend(_Series(g[f"state_{matrix}"][key]) for key, _ in entries)
        return out

    def _ensure_room(self, nbytes: int) -> None:
        """Refuses a write that would not fit, while the file is still whole. HDF5 cannot
        recover from a failed write (the file's superblock may then point past its end), so a
        full disk or a file-size limit is met here, with room left to commit and close."""
        needed = nbytes + _CLOSE_MARGIN
        free = shutil.disk_usage(self.path.parent).free
        limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if limit != resource.RLIM_INFINITY:
            free = min(free, limit - self.path.stat().st_size)
        if free < needed:
            self._refused = True  # nothing was written: the file is whole and can be closed as usual
            raise OSError(
                errno.ENOSPC,
                f"no room for the next {nbytes / 2**20:.2f} MiB ({max(free, 0) / 2**20:.2f} MiB left "
                f"on {self.path.parent}); the recording was closed with every committed snapshot",
            )

    def _append_all(self, kind: str, keys, arrays: list[np.ndarray]) -> int:
        self._ensure_room(sum(a.nbytes for a in arrays))
        if kind not in self._handles:
            self._handles[kind] = self._state_list() if keys is None else self._series_list(keys)
        row = self.written[kind]
        for series, value in zip(self._handles[kind], arrays):
            series.append(row, value)
        self.written[kind] += 1
        return row

    def write_snapshot(self, msg: Snapshot) -> None:
        self._append_all("snapshots", ["A", "B"], msg.slot.arrays)  # A0, B0, A1, B1, ...
        self._pending["snapshots"].append((msg.step, msg.micro_step, msg.time))

    def write_grads(self, msg: Grads) -> None:
        self._append_all("grads", ["grad_A", "grad_B"], msg.slot.arrays)
        self._pending["grads"].append((msg.step, msg.micro_step, msg.loss_scale))

    def write_state(self, msg: State) -> None:
        self._append_all("state", None, msg.slot.arrays)
        self._pending["state"].append(msg.step)

    def add_updates(self, msg: Updates) -> None:
        self.add_update_norms(msg.step, msg.slot.arrays[0])

    def add_update_norms(self, step: int, norms: np.ndarray) -> None:
        """One (modules, 4) row of /updates/norms for optimizer step ``step``."""
        self._pending["updates"].append((step, np.array(norms, dtype=np.float32, copy=True)))

    def add_scalars(self, msg: Scalars) -> None:
        columns = self.layout.scalar_columns
        # every optimizer step gets its row; a separate log only when it has a column's name
        if msg.optimizer_step or any(c in msg.values for c in columns):
            self._pending["scalars"].append(
                (msg.step, [float(msg.values.get(c, np.nan)) for c in columns])
            )
        for name, value in msg.values.items():
            if name not in columns:
                self._pending["other"].append((msg.step, name.encode()[:OTHER_NAME_BYTES], float(value)))

    # commit ----------------------------------------------------------------------------------
    @staticmethod
    def _extend(ds: h5py.Dataset, values) -> None:
        values = np.asarray(values)
        n = ds.shape[0]
        ds.resize(n + len(values), axis=0)
        ds[n:] = values

    def commit(self) -> None:
        """Makes every written row visible, in the order that keeps a crash consistent."""
        p = self._pending
        if not any(p.values()):
            return
        f = self.f
        # small data rows that have no separate data/index split yet
        if p["updates"]:
            self._extend(f["updates/norms"], np.stack([n for _, n in p["updates"]]))
        if p["scalars"]:
            values = np.array([v for _, v in p["scalars"]], dtype=np.float64).reshape(len(p["scalars"]), -1)
            for j, name in enumerate(self.layout.scalar_columns):
                self._extend(f["scalars"][name], values[:, j])
        if p["other"]:
            self._extend(f["scalars/other"], np.array(p["other"], dtype=f["scalars/other"].dtype))
        f.flush()  # every data row is on disk before anything points at it
        if p["snapshots"]:
            steps, micro, times = zip(*p["snapshots"])
            self._extend(f["snapshots/micro_step"], micro)
            self._extend(f["snapshots/time"], times)
            self._extend(f["snapshots/step"], steps)  # the count readers trust: last
        if p["grads"]:
            steps, micro, scales = zip(*p["grads"])
            self._extend(f["grad_snapshots/micro_step"], micro)
            self._extend(f["grad_snapshots/loss_scale"], scales)
            self._extend(f["grad_snapshots/step"], steps)
        if p["state"]:
            self._extend(f["state_snapshots/step"], p["state"])
        if p["updates"]:
            self._extend(f["updates/step"], [s for s, _ in p["updates"]])
        if p["scalars"]:
            self._extend(f["scalars/step"], [s for s, _ in p["scalars"]])
        if p["other"]:
            f["scalars/other"].attrs.modify("rows", np.int64(f["scalars/other"].shape[0]))
        f.flush()
        for rows in p.values():
            rows.clear()

    def set_status(self, status: str) -> None:
        self.f.attrs.modify("status", np.bytes_(status.encode()))

    def close(self, status: str) -> None:
        try:
            self.commit()
            self.set_status(status)
            self.f.flush()
        finally:
            self.f.close()

    def close_after_error(self) -> None:
        """Closes the file after a failed write without making it worse. After a refused write
        (see _ensure_room) the file is whole and closes as usual. Otherwise uncommitted rows are
        dropped (nothing points at them). When HDF5 itself can no longer write (disk full, file
        size limit), its metadata cache holds entries it cannot flush, and closing the file (or
        the library's exit handler, later) segfaults the whole process. So the file's descriptor
        is pointed at /dev/null first: the close then succeeds without touching the file, which
        stays as it was at its last successful flush, every committed snapshot readable."""
        if self._abandoned or not self.f.id.valid:
            return  # once only: touching a failed file again is what crashes
        self._abandoned = True
        if self._refused:  # no HDF5 call failed: commit what was written whole, then close
            self.close("failed")
            return
        for rows in self._pending.values():
            rows.clear()
        try:
            self.f.flush()  # can HDF5 still write? only then is the status worth a change
            self.set_status("failed")
            self.f.flush()
        except Exception:
            fd = self.f.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        try:
            self.f.close()
        except Exception:  # already reported to the training thread
            pass


# --- the background thread -------------------------------------------------------------------

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
            Grads: file.write_grads,
            State: file.write_state,
            Updates: file.add_updates,
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
            self.file.write_snapshot(msg)
        else:  # a float32 copy (it serves the update norms too): rounded here, not in training
            if self._rounded is None:
                shapes = [tuple(v.shape) for v in msg.slot.views]
                self._rounded = HostRing(FlatLayout(tuple(shapes)), storage, 1, pin=False)
            slot = self._rounded.acquire(self.alive)
            try:
                slot.tensor.copy_(msg.slot.tensor)
                self.file.write_snapshot(replace(msg, slot=slot))
            finally:
                self._rounded.release(slot)
        if msg.norms:
            self._track_norms(msg)

    def _track_norms(self, msg: Snapshot | Weights) -> None:
        if msg.norms == "baseline":
            self._norms.baseline(msg.slot.tensor, msg.slot.views)
        elif msg.norms == "update":
            self.file.add_update_norms(msg.step, self._norms.update(msg.slot.tensor, msg.slot.views))
        else:
            raise ValueError(f"unknown update-norm role {msg.norms!r}")  # a Recorder bug

    def _on_scalars(self, msg: Scalars) -> None:
        self.file.add_scalars(msg)
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
