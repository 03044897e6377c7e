"""Reading a recording: ``lorascope.open(path)`` → ``Recording``. Needs numpy and h5py, and
pandas for the DataFrames it hands out (``scalars``, ``updates``; imported when first asked
for, so that a quick look such as ``lorascope info`` starts without it). No torch, no model.
Arrays are read lazily, one numpy slice at a time.

A finished file, a file still being written and the file of a run killed with SIGKILL all open
(``opening.py``), and every file is validated before anything of it is trusted (``validate.py``):
a file that is not a recording the reader can read whole is one ``RecordingError`` sentence."""
from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import h5py
import numpy as np

from lorascope.errors import RecordingError
from lorascope.h5.format import STANDARD_SCALARS, UPDATE_COLUMNS, decode
from lorascope.h5.opening import damaged, open_h5
from lorascope.h5.superblock import read_superblock
from lorascope.h5.validate import Checked, CheckedModule, plain, validate
from lorascope.h5.writer_process import effective_status

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Recording", "ModuleRecording", "LazyArray", "open_recording", "open_many"]

# What h5py raises when HDF5 cannot read something of a validated file (a damaged chunk, a
# metadata block that fails its checksum, an object header that no longer opens): the file is
# then reported as damaged.
_READ_ERRORS = (OSError, RuntimeError, KeyError)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as exc:
        raise damaged(path, exc) from None


# Snapshots skipped between two wanted ones are read along while they are fewer bytes than this:
# a read costs ~1 ms whatever its size below it.
_GAP_BYTES = 1 << 20


class LazyArray:
    """A read-only view of an HDF5 series (T, ...) cut to its committed length T. Indexing
    reads only what is asked for and returns numpy (bfloat16 storage comes back as float32)."""

    def __init__(self, dataset: h5py.Dataset, length: int, path: Path) -> None:
        self._ds = dataset
        self._path = path
        self._encoding = plain(dataset.attrs.get("encoding", ""))
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
        except _READ_ERRORS as exc:
            raise damaged(self._path, exc) from None

    def _read_block(self, start: int, stop: int) -> np.ndarray:
        """A contiguous run of snapshots straight into a new array: read_direct skips h5py's
        fancy-selection machinery, about half the CPU of ``ds[start:stop]`` for whole series."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self._ds.dtype)
        try:
            self._ds.read_direct(out, source_sel=np.s_[start:stop])
        except _READ_ERRORS as exc:
            raise damaged(self._path, exc) from None
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
        except _READ_ERRORS as exc:
            raise damaged(self._path, exc) from None
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

    def __init__(self, checked: CheckedModule, rec: "Recording") -> None:
        self._rec = rec
        self._w0 = checked.w0
        self.attrs: dict[str, Any] = checked.attrs
        self.name: str = self.attrs.get("name", checked.name)
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
        self.weight_shape = tuple(self.attrs.get("weight_shape", ()) or ())  # a conv kernel's shape
        index = int(self.attrs.get("layer_index", -1))
        self.layer_index = None if index < 0 else index
        T, G, U = len(rec.steps), len(rec.grad_steps), len(rec.state_steps)
        series = checked.series
        self.A = LazyArray(series["A"], T, rec.path)  # (T, rank, in)
        self.B = LazyArray(series["B"], T, rec.path)  # (T, out, rank)
        self.grad_A = LazyArray(series["grad_A"], G, rec.path) if "grad_A" in series else None
        self.grad_B = LazyArray(series["grad_B"], G, rec.path) if "grad_B" in series else None
        self.state_A = {k: LazyArray(ds, U, rec.path) for k, ds in checked.state.get("state_A", {}).items()}
        self.state_B = {k: LazyArray(ds, U, rec.path) for k, ds in checked.state.get("state_B", {}).items()}
        # DoRA's magnitude vector (T, out) or (T, in), beside A and B
        self.magnitude = LazyArray(series["magnitude"], T, rec.path) if "magnitude" in series else None

    @property
    def W0(self) -> np.ndarray | None:
        """The frozen pretrained weight (out, in), when the run recorded it."""
        if self._w0 is None:
            return None
        with _reading(self._rec.path):
            return self._w0[()]

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
        self._f = open_h5(self.path)
        try:
            with _reading(self.path):
                self._load(validate(self._f, self.path))
        except BaseException:
            self._f.close()
            raise

    def _load(self, checked: Checked) -> None:
        self._checked = checked
        attrs = self.attrs = checked.attrs
        self.format_version = int(attrs["lorascope_format"])
        self.run_name: str = attrs.get("run_name", self.path.stem)
        self.config: dict = checked.config
        # the PEFT setup (active adapters, each adapter's LoraConfig, modules_to_save), {} without
        # PEFT; shown in config as "peft" too, so config comparisons include it
        self.peft: dict = checked.peft
        if self.peft and "peft" not in self.config:
            self.config["peft"] = self.peft
        # layers that trained but are not recorded: [{"module", "type", "reason"}]
        self.not_recorded: list[dict] = checked.not_recorded
        self.environment: dict = checked.environment
        self.lorascope_version: str = attrs.get("lorascope_version", "")
        self.stored_status: str = attrs.get("status", "")
        self.status = effective_status(self.stored_status, attrs)
        block = read_superblock(self.path)
        # a killed writer's flags: only SWMR readers (this one) open the file until they are cleared
        self.needs_repair = bool(block and block.open_for_writing and self.status == "interrupted")
        self.storage_dtype: str = attrs.get("storage_dtype", "float32")
        # Counts are committed rows: an index column is extended only after the data it indexes
        # is flushed, so every row below the shortest column's length is complete.
        index, counts = checked.index, checked.counts
        T, G = counts["snapshots"], counts["grads"]
        self.steps = index["snapshots/step"][:T].astype(np.int64)
        self.micro_steps = index["snapshots/micro_step"][:T].astype(np.int64)
        self.times = index["snapshots/time"][:T].astype(np.float64)
        no_rows = np.zeros(0, np.int64)
        self.grad_steps = index["grad_snapshots/step"][:G].astype(np.int64) if G else no_rows
        self.grad_micro_steps = index["grad_snapshots/micro_step"][:G].astype(np.int64) if G else no_rows
        self.state_steps = (index["state_snapshots/step"][:counts["state"]].astype(np.int64)
                            if counts["state"] else no_rows)
        self.modules: dict[str, ModuleRecording] = {m.name: ModuleRecording(m, self) for m in checked.modules}
        self._scalars: dict[str, np.ndarray] | None = None

    @property
    def repair_hint(self) -> str:
        """What to do about a killed writer's flags, as a sentence ('' when there is nothing to do)."""
        if not self.needs_repair:
            return ""
        return (f"{self.path} was not closed by its writer (killed), so h5dump and plain h5py "
                f"refuse it; `lorascope repair {shlex.quote(str(self.path))}` (in Python "
                "lorascope.h5.repair.repair(path), or HDF5's `h5clear -s`) clears its write flags "
                "and keeps every committed snapshot")

    # --- scalars and updates -----------------------------------------------------------------
    @property
    def scalar_columns(self) -> dict[str, np.ndarray]:
        """The scalars table as numpy columns (``step`` first, then the standard scalars, then
        the rest by name), without pandas: what a quick look reads."""
        if self._scalars is None:
            with _reading(self.path):
                self._scalars = _read_scalars(self._checked)
        return {name: values.copy() for name, values in self._scalars.items()}

    @property
    def scalars(self) -> pd.DataFrame:
        """One row per optimizer step, column ``step`` first; eval metrics as ``eval_*``."""
        import pandas as pd

        return pd.DataFrame(self.scalar_columns)

    def _update_steps(self) -> np.ndarray:
        with _reading(self.path):
            return self._checked.index["updates/step"][:self._checked.counts["updates"]].astype(np.int64)

    def _update_norms(self) -> np.ndarray:
        with _reading(self.path):
            return self._checked.update_norms[:self._checked.counts["updates"]]  # (U, modules, 4)

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


def _last_per_step(steps: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each step of `at` (sorted, unique), the last non-NaN value among the rows of that step
    (rows in file order), NaN where there is none: rows logged apart from the optimizer step (a
    trainer's periodic log) share its step."""
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    starts = np.searchsorted(steps, at, side="left")
    stops = np.searchsorted(steps, at, side="right")
    position = np.where(np.isnan(values), -1, np.arange(len(values)))
    last = np.full(len(at), -1)
    has_rows = stops > starts
    if has_rows.any():
        # the largest position of a non-NaN row within [start, stop) of each step that has rows
        # every row's step is in `at`, so the steps with rows are adjacent runs of the sorted rows
        last[has_rows] = np.maximum.reduceat(position, starts[has_rows])
    return np.where(last >= 0, values[np.maximum(last, 0)], np.nan)


def _read_scalars(checked: Checked) -> dict[str, np.ndarray]:
    """One row per step of /scalars/step or with a value in /scalars/other, holding the last value
    logged for each name at that step; a name never logged is not a column (absent, not NaN)."""
    n = checked.counts["scalars"]
    steps = checked.index["scalars/step"][:n].astype(np.int64)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, ds in checked.scalar_columns.items():
        values = ds[:n].astype(np.float64)
        # a column exists for every standard name; one the run never logged is absent (files
        # before the "logged" attribute: a column that is NaN throughout). A logged column of NaN
        # (a diverged loss) stays.
        logged = checked.scalar_logged.get(name)
        if logged or (logged is None and not np.isnan(values).all()):
            series[name] = (steps, values)
    rows = checked.counts["other"]
    if rows:
        other = checked.scalars_other[:rows]
        other = other[~np.isnan(other["value"])]  # a NaN row says nothing, not even its step
        names = np.array([b.decode("utf-8", "replace") for b in other["name"]], dtype=object)
        other_steps, other_values = other["step"].astype(np.int64), other["value"].astype(np.float64)
        for name in dict.fromkeys(names):
            mine = names == name
            if name in series:  # a column's own rows come first: the column wins a tie
                base_steps, base_values = series[name]
                series[name] = (np.concatenate([other_steps[mine], base_steps]),
                                np.concatenate([other_values[mine], base_values]))
            else:
                series[name] = (other_steps[mine], other_values[mine])
    at = np.unique(np.concatenate([steps, *[s for s, _ in series.values()]]))
    standard = [c for c in STANDARD_SCALARS if c in series]
    rest = sorted(c for c in series if c not in standard)
    columns = {"step": at, **{c: _last_per_step(*series[c], at) for c in [*standard, *rest]}}
    return columns


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
