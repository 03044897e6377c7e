"""The recording file, written: creating the v1 layout (docs/format.md), appending rows, and
committing them so that a snapshot is either fully readable or absent. Needs numpy and h5py only.

Commit protocol (what makes a killed run's file safe): data rows are written first, then the file
is flushed, and only then are the index datasets (``/snapshots/step`` and friends) extended and
flushed again. A reader takes its counts from the index datasets, so everything it can see was on
disk before the index pointed at it. The file is in SWMR mode from its creation, which is what
lets HDF5 open it after a crash (and while it is being written) without ``h5clear``.

The file is written with ``LIBVER`` = ("v110", "v110"): SWMR needs the 1.10 superblock, and the
upper bound keeps every object in 1.10's encodings, so Debian's HDF5 1.10 tools (``h5dump``,
``h5ls``) and h5py on any HDF5 ≥ 1.10 read it. With ``libver="latest"`` under HDF5 2.0 the
compound ``/scalars/other`` got a datatype message that HDF5 1.10 and 1.14 cannot decode."""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.h5.format import (
    BF16_ENCODING,
    LIBVER,
    OTHER_NAME_BYTES,
    STATUS_BYTES,
    UPDATE_COLUMNS,
    numpy_storage_dtype,
)

__all__ = ["ModuleSpec", "FileLayout", "RecordingFile"]

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
    magnitude: int = 0  # DoRA: the length of the magnitude vector stored with each snapshot
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
        self.written = {"snapshots": 0, "grads": 0, "state": 0, "magnitudes": 0}
        self._logged: set[str] = set()  # scalar columns given a value so far
        self._marked: set[str] = set()  # those whose "logged" attribute says so on disk
        self._abandoned = False  # set once a write failed: see close_after_error
        self._refused = False  # set when _ensure_room refused a write before HDF5 saw it
        self._handles: dict[str, list[_Series]] = {}
        try:
            self.f = h5py.File(self.path, "w", libver=LIBVER)
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
            # set once a value was given: a column of NaN could be a run that was never asked
            # for it or one whose value was NaN (a diverged loss), and readers must tell them apart
            scalars[name].attrs["logged"] = np.int8(0)
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
            if spec.magnitude:
                # float32 whatever the storage dtype: DoRA's ΔW is a small difference of W0-sized
                # terms, which a float16 magnitude would swamp
                self._series(g, "magnitude", (spec.magnitude,), "f4", stored=False)
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

    def _magnitude_list(self) -> list["_Series"]:
        return [_Series(self.f["modules"][spec.name]["magnitude"]) for spec in self.modules if spec.magnitude]

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
            lists = {"state": self._state_list, "magnitudes": self._magnitude_list}
            self._handles[kind] = lists[kind]() if keys is None else self._series_list(keys)
        row = self.written[kind]
        for series, value in zip(self._handles[kind], arrays):
            series.append(row, value)
        self.written[kind] += 1
        return row

    def write_snapshot(self, step: int, micro_step: int, time: float, arrays: list[np.ndarray]) -> None:
        """One weight snapshot: arrays in pair order (A0, B0, A1, B1, ...), in the storage dtype."""
        self._append_all("snapshots", ["A", "B"], arrays)
        self._pending["snapshots"].append((step, micro_step, time))

    def write_magnitudes(self, arrays: list[np.ndarray]) -> None:
        """DoRA's magnitude vectors for the next snapshot, in the order of the DoRA modules. Sent
        before that snapshot, so the snapshot's commit covers them."""
        self._append_all("magnitudes", None, arrays)

    def write_grads(self, step: int, micro_step: int, loss_scale: float, arrays: list[np.ndarray]) -> None:
        self._append_all("grads", ["grad_A", "grad_B"], arrays)
        self._pending["grads"].append((step, micro_step, loss_scale))

    def write_state(self, step: int, arrays: list[np.ndarray]) -> None:
        self._append_all("state", None, arrays)
        self._pending["state"].append(step)

    def add_update_norms(self, step: int, norms: np.ndarray) -> None:
        """One (modules, 4) row of /updates/norms for optimizer step ``step``."""
        self._pending["updates"].append((step, np.array(norms, dtype=np.float32, copy=True)))

    def add_scalars(self, step: int, values: dict[str, float], optimizer_step: bool = True) -> None:
        columns = self.layout.scalar_columns
        # every optimizer step gets its row; a separate log only when it has a column's name
        if optimizer_step or any(c in values for c in columns):
            self._pending["scalars"].append((step, [float(values.get(c, np.nan)) for c in columns]))
            self._logged.update(c for c in columns if c in values)
        for name, value in values.items():
            if name not in columns:
                self._pending["other"].append((step, name.encode()[:OTHER_NAME_BYTES], float(value)))

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
            for name in self._logged - self._marked:
                f["scalars"][name].attrs.modify("logged", np.int8(1))
            self._marked |= self._logged
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
