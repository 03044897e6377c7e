"""Reading a recording: ``lorascope.open(path)`` → ``Recording``. Needs numpy and h5py, and
pandas for the DataFrames it hands out (``scalars``, ``updates``; imported when first asked
for, so that a quick look such as ``lorascope info`` starts without it). No torch, no model.
Arrays are read lazily, one numpy slice at a time.

Files are opened in SWMR-read mode without file locking: that reads a finished file, a file that
is still being written, and the file of a run killed with SIGKILL, all without ``h5clear``."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.h5.format import FORMAT_VERSION, STANDARD_SCALARS, UPDATE_COLUMNS, decode

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Recording", "ModuleRecording", "LazyArray", "open_recording", "open_many"]


def _damaged(path: Path, exc: Exception) -> RecordingError:
    return RecordingError(
        f"{path} is a damaged or truncated HDF5 file and cannot be read ({exc}); "
        "record the run again or restore the file from a copy"
    )


def _plain(value: Any) -> Any:
    """HDF5 attribute values → plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# Snapshots skipped between two wanted ones are read along while they are fewer bytes than this:
# a read costs ~1 ms whatever its size below it.
_GAP_BYTES = 1 << 20


class LazyArray:
    """A read-only view of an HDF5 series (T, ...) cut to its committed length T. Indexing
    reads only what is asked for and returns numpy (bfloat16 storage comes back as float32)."""

    def __init__(self, dataset: h5py.Dataset, length: int, path: Path) -> None:
        self._ds = dataset
        self._path = path
        self._encoding = _plain(dataset.attrs.get("encoding", ""))
        self.shape = (int(length), *dataset.shape[1:])
        self.dtype = np.dtype("float32") if self._encoding else dataset.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _read(self, selection) -> np.ndarray:
        try:
            return decode(self._ds[selection], self._encoding)
        except OSError as exc:
            raise _damaged(self._path, exc) from None

    def _read_block(self, start: int, stop: int) -> np.ndarray:
        """A contiguous run of snapshots straight into a new array: read_direct skips h5py's
        fancy-selection machinery, about half the CPU of ``ds[start:stop]`` for whole series."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self._ds.dtype)
        try:
            self._ds.read_direct(out, source_sel=np.s_[start:stop])
        except OSError as exc:
            raise _damaged(self._path, exc) from None
        return out

    def read_into(self, out: np.ndarray, block: int = 64) -> np.ndarray:
        """Snapshots 0 … len(out)−1 written into `out` (float32 or float64, shape (n, …)) and
        returned: no new series-sized array, so a caller that reuses `out` across modules pays
        the kernel's page faults once, not per module (they cost 3–4× the copy itself). A stored
        dtype other than out's (float16, bfloat16 bits) is converted `block` snapshots at a time."""
        n = len(out)
        if out.shape[1:] != self.shape[1:] or n > len(self):
            raise ValueError(f"cannot read {len(self)} snapshots of shape {self.shape[1:]} into {out.shape}")
        try:
            if n and not self._encoding and self._ds.dtype == out.dtype:
                self._ds.read_direct(out, source_sel=np.s_[0:n])
                return out
            for start in range(0, n, block):
                stop = min(n, start + block)
                out[start:stop] = decode(self._ds[start:stop], self._encoding)
        except OSError as exc:
            raise _damaged(self._path, exc) from None
        return out

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        n = len(self)
        if isinstance(first, (int, np.integer)):
            t = int(first) + n if first < 0 else int(first)
            if not 0 <= t < n:
                raise IndexError(f"snapshot index {first} is out of range for {n} snapshots")
            return self._read(t)[rest] if rest else self._read(t)
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            if step == 1 and stop > start and not self._encoding:
                data = self._read_block(start, stop)
                return data[(slice(None), *rest)] if rest else data
            if step > 0:
                data = self._read(slice(start, stop, step)) if stop > start else self._empty()
                return data[(slice(None), *rest)] if rest else data
            first = np.arange(start, stop, step)
        index = np.asarray(first)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + n, index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"snapshot index out of range for {n} snapshots")
        # read the increasing unique indices, then put them in the asked order
        unique, inverse = np.unique(index, return_inverse=True)
        data = self._read_runs(unique) if unique.size else self._empty()
        data = data[inverse.reshape(index.shape)]
        return data[(slice(None), *rest)] if rest else data

    def _read_runs(self, unique: np.ndarray) -> np.ndarray:
        """Snapshots at increasing indices, in few contiguous reads. h5py's own point selection
        (`ds[[0, 2, 5]]`) measured ~50 ms for 50 snapshots of a small matrix, 30x reading them one
        by one, and one read costs ~1 ms whatever its size up to about a MiB: runs of wanted
        snapshots are read together with the gaps between them while a gap is under `_GAP_BYTES`."""
        per_snapshot = max(1, int(np.prod(self.shape[1:])) * self._ds.dtype.itemsize)
        gap = max(1, _GAP_BYTES // per_snapshot)
        breaks = np.flatnonzero(np.diff(unique) > gap) + 1
        out = np.empty((len(unique), *self.shape[1:]), dtype=self.dtype)
        at = 0
        for run in np.split(unique, breaks):
            a, b = int(run[0]), int(run[-1]) + 1
            # the decoded block: read_direct where the stored values need no decoding
            block = self._read(slice(a, b)) if self._encoding else self._read_block(a, b)
            out[at:at + len(run)] = block[run - a]
            at += len(run)
        return out

    def _empty(self) -> np.ndarray:
        return np.empty((0, *self.shape[1:]), dtype=self.dtype)


class ModuleRecording:
    """One adapted module: its attributes and lazy A, B (and optional gradients, state, W0)."""

    def __init__(self, group: h5py.Group, rec: "Recording") -> None:
        self._group = group
        self._rec = rec
        self.attrs: dict[str, Any] = {k: _plain(v) for k, v in group.attrs.items()}
        self.name: str = self.attrs.get("name", group.name.split("/", 2)[-1])
        self.rank = int(self.attrs["rank"])
        self.alpha = float(self.attrs["alpha"])
        self.scaling = float(self.attrs["scaling"])
        self.in_features = int(self.attrs["in_features"])
        self.out_features = int(self.attrs["out_features"])
        self.kind = str(self.attrs.get("kind", ""))
        self.init = str(self.attrs.get("init", ""))
        index = int(self.attrs.get("layer_index", -1))
        self.layer_index = None if index < 0 else index
        T, G, U = len(rec.steps), len(rec.grad_steps), len(rec.state_steps)
        self.A = LazyArray(group["A"], T, rec.path)  # (T, rank, in)
        self.B = LazyArray(group["B"], T, rec.path)  # (T, out, rank)
        self.grad_A = LazyArray(group["grad_A"], G, rec.path) if "grad_A" in group else None
        self.grad_B = LazyArray(group["grad_B"], G, rec.path) if "grad_B" in group else None
        self.state_A = self._state("state_A", U)
        self.state_B = self._state("state_B", U)

    def _state(self, name: str, length: int) -> dict[str, LazyArray]:
        if name not in self._group:
            return {}
        return {k: LazyArray(ds, length, self._rec.path) for k, ds in self._group[name].items()}

    @property
    def W0(self) -> np.ndarray | None:
        """The frozen pretrained weight (out, in), when the run recorded it."""
        return self._group["W0"][()] if "W0" in self._group else None

    def delta_w(self, t: int) -> np.ndarray:
        """ΔW = scaling · B[t] @ A[t], shape (out, in): what the adapter adds to W0."""
        return (self.scaling * (self.B[t] @ self.A[t])).astype(np.float32)

    @property
    def updates(self) -> pd.DataFrame:
        """Per optimizer step: ‖ΔA‖, ‖ΔB‖ (Frobenius), ‖A‖, ‖B‖ after the step, and the
        update-to-weight ratios ‖ΔA‖/‖A‖, ‖ΔB‖/‖B‖ (NaN while the weight is zero)."""
        import pandas as pd

        norms = self._rec._update_norms()[:, int(self.attrs["index"]), :]  # (U, 4)
        frame = pd.DataFrame(norms.astype(np.float64), columns=[f"{c}_norm" for c in UPDATE_COLUMNS])
        frame.insert(0, "step", self._rec._update_steps())
        with np.errstate(divide="ignore", invalid="ignore"):
            for m in ("A", "B"):
                w = frame[f"{m}_norm"].to_numpy()
                frame[f"d{m}_ratio"] = np.where(w > 0, frame[f"d{m}_norm"].to_numpy() / w, np.nan)
        return frame

    def __repr__(self) -> str:
        return (f"ModuleRecording({self.name!r}, rank={self.rank}, in={self.in_features}, "
                f"out={self.out_features}, T={len(self.A)})")


class Recording:
    """One recording file, opened for reading. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = _open_h5(self.path)
        try:
            self._load()
        except RecordingError:
            self._f.close()
            raise
        except (OSError, KeyError, ValueError) as exc:
            self._f.close()
            raise _damaged(self.path, exc) from None

    def _load(self) -> None:
        f = self._f
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        if "lorascope_format" not in attrs:
            raise RecordingError(
                f"{self.path} is an HDF5 file but not a lorascope recording (it has no "
                "lorascope_format attribute); give a file written by `lorascope record`"
            )
        self.format_version = int(attrs["lorascope_format"])
        if self.format_version > FORMAT_VERSION:
            from lorascope import __version__

            raise RecordingError(
                f"{self.path} uses recording format v{self.format_version}, newer than this "
                f"lorascope {__version__} reads (v{FORMAT_VERSION}); upgrade lorascope "
                "(pip install -U lorascope) to read it"
            )
        self.attrs = attrs
        self.run_name: str = attrs.get("run_name", self.path.stem)
        self.config: dict = json.loads(attrs.get("config", "{}") or "{}")
        self.environment: dict = json.loads(attrs.get("environment", "{}") or "{}")
        self.lorascope_version: str = attrs.get("lorascope_version", "")
        self.stored_status: str = attrs.get("status", "")
        self.status = _effective_status(self.stored_status, attrs)
        self.storage_dtype: str = attrs.get("storage_dtype", "float32")
        # T is the committed count: /snapshots/step is extended only after the data it indexes
        # is flushed, so every row below it is complete
        self.steps = _committed(f, "snapshots", ("step", "micro_step", "time"))
        T = len(self.steps)
        self.micro_steps = f["snapshots/micro_step"][:T].astype(np.int64)
        self.times = f["snapshots/time"][:T].astype(np.float64)
        self.grad_steps = (_committed(f, "grad_snapshots", ("step", "micro_step", "loss_scale"))
                           if "grad_snapshots" in f else np.zeros(0, np.int64))
        G = len(self.grad_steps)
        self.grad_micro_steps = (f["grad_snapshots/micro_step"][:G].astype(np.int64)
                                 if G else np.zeros(0, np.int64))
        self.state_steps = (f["state_snapshots/step"][:].astype(np.int64)
                            if "state_snapshots" in f else np.zeros(0, np.int64))
        order = json.loads(_plain(f["modules"].attrs.get("order", "[]")))
        names = order or list(f["modules"])
        self.modules: dict[str, ModuleRecording] = {
            n: ModuleRecording(f["modules"][n], self) for n in names
        }
        self._scalars: dict[str, np.ndarray] | None = None

    # --- scalars and updates -----------------------------------------------------------------
    @property
    def scalar_columns(self) -> dict[str, np.ndarray]:
        """The scalars table as numpy columns (``step`` first, then the standard scalars, then
        the rest by name), without pandas: what a quick look reads."""
        if self._scalars is None:
            self._scalars = _read_scalars(self._f)
        return {name: values.copy() for name, values in self._scalars.items()}

    @property
    def scalars(self) -> pd.DataFrame:
        """One row per optimizer step, column ``step`` first; eval metrics as ``eval_*``."""
        import pandas as pd

        return pd.DataFrame(self.scalar_columns)

    def _update_steps(self) -> np.ndarray:
        return self._f["updates/step"][:].astype(np.int64)

    def _update_norms(self) -> np.ndarray:
        n = self._f["updates/step"].shape[0]
        return self._f["updates/norms"][:n]  # (U, modules, 4)

    # --- selection ---------------------------------------------------------------------------
    def index_of(self, step: int) -> int:
        """The snapshot nearest to optimizer step ``step`` (the earlier one on a tie)."""
        if len(self.steps) == 0:
            raise RecordingError(f"{self.path} holds no complete snapshot yet")
        return int(np.argmin(np.abs(self.steps - int(step))))

    def __repr__(self) -> str:
        return (f"Recording({str(self.path)!r}, run={self.run_name!r}, status={self.status}, "
                f"modules={len(self.modules)}, snapshots={len(self.steps)})")

    # --- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# HDF5 keeps a chunk cache per open dataset (8 MiB by default here), and a Recording keeps every
# dataset open: reading all modules once grew the process by ~20 MiB per module (0.9 GiB for 48
# modules, twice the largest module's series). A chunk is one snapshot, read whole and decompressed
# once per read, so the cache would only ever hold chunks that are not read again.
_CHUNK_CACHE = {"rdcc_nbytes": 0}


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise RecordingError(f"no recording at {path}; check the path (recordings are .h5 files)")
    if path.is_dir():
        raise RecordingError(f"{path} is a folder; give the path of a .h5 recording inside it")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    if not h5py.is_hdf5(path):
        raise RecordingError(
            f"{path} is not an HDF5 file; lorascope recordings are .h5 files written by "
            "`lorascope record` or the Recorder"
        )
    # A finished file opens normally, and only then does HDF5 check its length against the
    # superblock; SWMR-read mode skips that check and retries failed reads for a long time.
    try:
        return h5py.File(path, "r", locking=False, **_CHUNK_CACHE)
    except OSError as exc:
        if "truncated" in str(exc) and not _superblock(path)[1]:
            raise _damaged(path, exc) from None
    # A file whose SWMR writer is still running, or was killed, is marked open for writing: only
    # SWMR-read mode opens it. Check its length first ourselves. A live writer can write a new end
    # into the superblock before the file has grown to it (seen once in a CI run: 147,456 bytes
    # against 158,610), so a short file marked as being written gets a moment to catch up.
    for pause in _LIVE_PAUSES:
        time.sleep(pause)
        stored_eof, _ = _superblock(path)
        size = path.stat().st_size
        if stored_eof is None or size >= stored_eof:
            break
    else:
        raise _damaged(path, OSError(f"file is {size} bytes, its superblock says {stored_eof}"))
    try:
        return h5py.File(path, "r", swmr=True, locking=False, **_CHUNK_CACHE)
    except OSError as exc:
        raise _damaged(path, exc) from None


# Seconds to wait, one after the other, for a file being written to reach the end its superblock
# names (0.44 s in all; a killed writer's short file is then reported as damaged).
_LIVE_PAUSES = (0.0, 0.01, 0.03, 0.1, 0.3)


def _superblock(path: Path) -> tuple[int | None, bool]:
    """(end-of-file address, whether a writer has the file open) from a version 2/3 superblock
    at offset 0 (what lorascope writes with libver="latest"); (None, False) for another layout.
    The consistency flags (byte 11) say 'open for writing' (bit 0) and 'SWMR writer' (bit 2)."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if len(head) < 36 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return None, False
    base = int.from_bytes(head[12:20], "little")
    return base + int.from_bytes(head[28:36], "little"), bool(head[11] & 0b101)


def _committed(f: h5py.File, group: str, names: Iterable[str]) -> np.ndarray:
    """The index column ``step`` cut to the length every column of the index has reached."""
    g = f[group]
    n = min(g[name].shape[0] for name in names)
    return g["step"][:n].astype(np.int64)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    try:  # a killed child that its parent has not reaped yet is a zombie: gone too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _effective_status(stored: str, attrs: dict) -> str:
    """A file still marked "running" whose writer process is gone was interrupted (SIGKILL,
    power loss). Only decidable on the machine that wrote it; elsewhere it stays "running"."""
    if stored != "running":
        return stored
    pid, host = attrs.get("writer_pid"), attrs.get("writer_host")
    if pid is not None and host == socket.gethostname() and _pid_gone(int(pid)):
        return "interrupted"
    return stored


def _last_per_step(steps: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The last non-NaN value logged at each step of `at` (increasing), NaN where none was."""
    out = np.full(len(at), np.nan)
    valid = ~np.isnan(values)
    if not valid.any():
        return out
    steps, values = steps[valid], values[valid]
    order = np.argsort(steps, kind="stable")  # within a step, the order they were logged in
    steps, values = steps[order], values[order]
    last = np.r_[steps[1:] != steps[:-1], True]  # the last row of each step
    out[np.searchsorted(at, steps[last])] = values[last]
    return out


def _read_scalars(f: h5py.File) -> dict[str, np.ndarray]:
    """/scalars as columns over the steps logged: rows that share a step (a trainer's periodic log
    beside the optimizer step) keep each column's last value that is not NaN; /scalars/other
    (names outside the fixed columns) becomes a column per name, filling what the fixed columns
    lack."""
    g = f["scalars"]
    n = g["step"].shape[0]
    steps = g["step"][:n].astype(np.int64)
    fixed = {name: ds[:n].astype(np.float64) for name, ds in g.items() if name not in ("step", "other") and ds.ndim == 1}
    rows = int(g["other"].attrs.get("rows", 0)) if "other" in g else 0
    other = g["other"][:rows] if rows else None
    names, at = {}, [steps]
    if other is not None:
        keep = ~np.isnan(other["value"].astype(np.float64))  # a NaN logged under a name says nothing
        other = other[keep]
        for raw in dict.fromkeys(other["name"]):
            names[raw.decode("utf-8", "replace")] = other["name"] == raw
        at.append(other["step"].astype(np.int64))
    at = np.unique(np.concatenate(at))
    columns = {name: _last_per_step(steps, values, at) for name, values in fixed.items()}
    for name, rows_of in names.items():
        logged = _last_per_step(other["step"][rows_of].astype(np.int64), other["value"][rows_of].astype(np.float64), at)
        columns[name] = np.where(np.isnan(columns[name]), logged, columns[name]) if name in columns else logged
    standard = [c for c in STANDARD_SCALARS if c in columns]
    rest = sorted(c for c in columns if c not in standard)
    return {"step": at, **{c: columns[c] for c in (*standard, *rest)}}


def open_recording(path: str | Path) -> Recording:
    """Opens one recording; raises RecordingError with a sentence when it cannot."""
    return Recording(path)


def open_many(paths: Iterable[str | Path]) -> list[Recording]:
    """Opens several recordings for comparison; if one fails, the others are closed again."""
    opened: list[Recording] = []
    try:
        for path in paths:
            opened.append(Recording(path))
    except BaseException:
        for rec in opened:
            rec.close()
        raise
    return opened
