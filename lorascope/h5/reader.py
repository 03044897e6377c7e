"""Reading a recording: ``lorascope.open(path)`` → ``Recording``. Needs numpy, h5py and pandas
only (no torch, no model). Arrays are read lazily, one numpy slice at a time.

Files are opened without file locking, in SWMR-read mode when their superblock says a writer has
them open: that reads a finished file, a file that is still being written (by another process),
and the file of a run killed with SIGKILL, all without ``h5clear``. Such a killed file still
refuses other HDF5 readers until ``lorascope.h5.repair`` clears its flags (``rec.needs_repair``)."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
import pandas as pd

from lorascope.errors import RecordingError
from lorascope.h5.format import FORMAT_VERSION, STANDARD_SCALARS, UPDATE_COLUMNS, decode
from lorascope.h5.superblock import read_superblock

__all__ = ["Recording", "ModuleRecording", "LazyArray", "open_recording", "open_many"]


def _damaged(path: Path, exc: Exception) -> RecordingError:
    return RecordingError(
        f"{path} is a damaged or truncated HDF5 file and cannot be read ({exc}); "
        "record the run again or restore the file from a copy"
    )


def _held_here(path: Path) -> RecordingError:
    """HDF5 opens a file once per process: a second open with other flags is refused."""
    block = read_superblock(path)
    if block is not None and block.open_for_writing:
        return RecordingError(
            f"{path} is being written by a Recorder in this process, and HDF5 will not open it a "
            "second time here; read it live from another process (lorascope.open or `lorascope "
            f"info {path}` in a second shell), or here once the Recorder is closed"
        )
    return RecordingError(
        f"{path} is already open in this process through h5py with other settings; close that "
        "h5py.File first, or read the file with h5py alone"
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
        # h5py wants increasing unique indices: read those, then put them in the asked order
        unique, inverse = np.unique(index, return_inverse=True)
        data = self._read(unique) if unique.size else self._empty()
        data = data[inverse.reshape(index.shape)]
        return data[(slice(None), *rest)] if rest else data

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
        self.adapter = str(self.attrs.get("adapter", ""))  # the PEFT adapter; "" otherwise
        # DoRA: "row" or "column" (which norm of W0 + scaling·B·A the magnitude rescales)
        self.magnitude_norm = str(self.attrs.get("magnitude_norm", ""))
        self.weight_shape = tuple(self.attrs.get("weight_shape", ()))  # a conv kernel's shape
        index = int(self.attrs.get("layer_index", -1))
        self.layer_index = None if index < 0 else index
        T, G, U = len(rec.steps), len(rec.grad_steps), len(rec.state_steps)
        self.A = LazyArray(group["A"], T, rec.path)  # (T, rank, in)
        self.B = LazyArray(group["B"], T, rec.path)  # (T, out, rank)
        self.grad_A = LazyArray(group["grad_A"], G, rec.path) if "grad_A" in group else None
        self.grad_B = LazyArray(group["grad_B"], G, rec.path) if "grad_B" in group else None
        self.state_A = self._state("state_A", U)
        self.state_B = self._state("state_B", U)
        # DoRA's magnitude vector (T, out) or (T, in), beside A and B
        self.magnitude = LazyArray(group["magnitude"], T, rec.path) if "magnitude" in group else None

    def _state(self, name: str, length: int) -> dict[str, LazyArray]:
        if name not in self._group:
            return {}
        return {k: LazyArray(ds, length, self._rec.path) for k, ds in self._group[name].items()}

    @property
    def W0(self) -> np.ndarray | None:
        """The frozen pretrained weight (out, in), when the run recorded it."""
        return self._group["W0"][()] if "W0" in self._group else None

    @property
    def dora(self) -> bool:
        return self.magnitude is not None

    def lora_delta(self, t: int) -> np.ndarray:
        """scaling · B[t] @ A[t], shape (out, in): the low-rank term (ΔW itself unless DoRA)."""
        return (self.scaling * (self.B[t] @ self.A[t])).astype(np.float32)

    def delta_w(self, t: int) -> np.ndarray:
        """The change of the layer's effective weight at snapshot t, shape (out, in) like W0:
        scaling · B @ A for LoRA; for DoRA W_eff − W0 with W_eff = m ⊙ V / ‖V‖, V = W0 +
        scaling · B @ A, the norm taken per row (or per column: ``magnitude_norm``)."""
        if not self.dora:
            return self.lora_delta(t)
        W0 = self.W0
        if W0 is None:
            raise RecordingError(
                f"{self._rec.path}: the DoRA module {self.name} has no W0, which its ΔW needs; "
                "the file is incomplete, record the run again"
            )
        W0 = W0.astype(np.float64)
        # float64: ΔW is a small difference of W0-sized terms
        V = W0 + self.scaling * (self.B[t].astype(np.float64) @ self.A[t].astype(np.float64))
        m = self.magnitude[t].astype(np.float64)
        if self.magnitude_norm == "column":
            W_eff = V * (m / np.linalg.norm(V, axis=0))[None, :]
        else:
            W_eff = V * (m / np.linalg.norm(V, axis=1))[:, None]
        return (W_eff - W0).astype(np.float32)

    @property
    def updates(self) -> pd.DataFrame:
        """Per optimizer step: ‖ΔA‖, ‖ΔB‖ (Frobenius), ‖A‖, ‖B‖ after the step, and the
        update-to-weight ratios ‖ΔA‖/‖A‖, ‖ΔB‖/‖B‖ (NaN while the weight is zero)."""
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
        # the PEFT setup (active adapters, each adapter's LoraConfig, modules_to_save), {} without
        # PEFT; shown in config as "peft" too, so config comparisons include it
        self.peft: dict = json.loads(attrs.get("peft", "{}") or "{}")
        if self.peft and "peft" not in self.config:
            self.config["peft"] = self.peft
        # layers that trained but are not recorded: [{"module", "type", "reason"}]
        self.not_recorded: list[dict] = json.loads(attrs.get("not_recorded", "[]") or "[]")
        self.environment: dict = json.loads(attrs.get("environment", "{}") or "{}")
        self.lorascope_version: str = attrs.get("lorascope_version", "")
        self.stored_status: str = attrs.get("status", "")
        self.status = _effective_status(self.stored_status, attrs)
        block = read_superblock(self.path)
        # a killed writer's flags: only SWMR readers (this one) open the file until they are cleared
        self.needs_repair = bool(block and block.open_for_writing and self.status == "interrupted")
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
        self._scalars: pd.DataFrame | None = None

    @property
    def repair_hint(self) -> str:
        """What to do about a killed writer's flags, as a sentence ('' when there is nothing to do)."""
        if not self.needs_repair:
            return ""
        return (f"{self.path} was not closed by its writer (killed), so h5dump and plain h5py "
                f"refuse it; lorascope.h5.repair.repair('{self.path}') (or HDF5's `h5clear -s`) "
                "clears its write flags and keeps every committed snapshot")

    # --- scalars and updates -----------------------------------------------------------------
    @property
    def scalars(self) -> pd.DataFrame:
        """One row per optimizer step, column ``step`` first; eval metrics as ``eval_*``."""
        if self._scalars is None:
            self._scalars = _read_scalars(self._f)
        return self._scalars.copy()

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
        if any(words in str(exc) for words in _HELD_HERE):
            raise _held_here(path) from None
        block = read_superblock(path)
        if "truncated" in str(exc) and not (block and block.open_for_writing):
            raise _damaged(path, exc) from None
    # A file whose SWMR writer is still running, or was killed, is marked open for writing: only
    # SWMR-read mode opens it. Check its length first ourselves. A live writer can write a new end
    # into the superblock before the file has grown to it (seen once in a CI run: 147,456 bytes
    # against 158,610), so a short file marked as being written gets a moment to catch up.
    for pause in _LIVE_PAUSES:
        time.sleep(pause)
        block = read_superblock(path)
        stored_eof = None if block is None else block.eof
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


# HDF5's words when a file this process already holds is opened with other flags
_HELD_HERE = ("file locking flag values don't match", "SWMR read access flag not the same")


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


def _read_scalars(f: h5py.File) -> pd.DataFrame:
    g = f["scalars"]
    n = g["step"].shape[0]
    columns = {"step": g["step"][:n].astype(np.int64)}
    for name, ds in g.items():
        if name not in ("step", "other") and ds.ndim == 1:
            values = ds[:n].astype(np.float64)
            # a column exists for every standard name; one the run never logged is absent (files
            # before the "logged" attribute: a column that is NaN throughout)
            logged = ds.attrs.get("logged")
            if (bool(logged) if logged is not None else not np.isnan(values).all()):
                columns[name] = values
    frame = pd.DataFrame(columns)
    # rows logged apart from the optimizer step (a trainer's periodic log) share its step
    frame = frame.groupby("step", sort=True).last()
    if "other" in g:
        rows = int(g["other"].attrs.get("rows", 0))
        other = g["other"][:rows]
        if rows:
            long = pd.DataFrame({
                "step": other["step"].astype(np.int64),
                "name": [b.decode("utf-8", "replace") for b in other["name"]],
                "value": other["value"].astype(np.float64),
            })
            wide = long.pivot_table(index="step", columns="name", values="value", aggfunc="last")
            wide.columns.name = None
            frame = frame.combine_first(wide)
    frame.index.name = "step"
    frame = frame.reset_index()
    standard = [c for c in STANDARD_SCALARS if c in frame.columns]
    rest = sorted(c for c in frame.columns if c != "step" and c not in standard)
    return frame[["step", *standard, *rest]]


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
