"""The thin layer from recordings to tidy DataFrames: one row per (run, module, matrix, step)
with columns `run, module, layer, role, matrix, step`, then the metrics (the stats table adds
`micro_step`, set on gradient rows, which with accumulation share a step). It streams over
modules, reading one module's A and B series at a time into memory reused from module to module,
so memory stays bounded by one module's series (1.3x the largest, measured).

Only this file touches a `Recording` (the reading API of docs/architecture.md); every number
comes from the pure functions beside it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from lorascope.analysis import fits as _fits
from lorascope.analysis import geometry as _geo
from lorascope.analysis import health as _health
from lorascope.analysis import lowrank as _lowrank
from lorascope.analysis import spectra as _spectra
from lorascope.analysis import stats as _stats
from lorascope.analysis.batch import Scratch
from lorascope.errors import RecordingError, UsageError
from lorascope.registry import Registry

__all__ = [
    "KEYS",
    "Options",
    "ModuleAnalysis",
    "read_series",
    "TABLES",
    "Analysis",
    "analyze",
    "stats_table",
    "fits_table",
    "spectra_table",
    "singular_values_table",
    "geometry_table",
    "similarity_table",
    "histogram_table",
    "best_family_changes",
    "health_findings",
]

KEYS = ["run", "module", "layer", "role", "matrix", "step"]


@dataclass(frozen=True)
class Options:
    """What the analysis computes and where it samples. Everything linear in the data (moments,
    norms, dynamics, spectra) covers every entry of every snapshot; the superlinear parts use
    subsets, and the tables say which: quantiles a fixed subset of `quantile_samples` entries
    (column `quantile_n`), fits `fit_samples` entries (column `n`) at up to `fit_steps` evenly
    spaced snapshots (columns `fitted_steps` of `recorded_steps`), geometry, similarity and
    histograms up to `max_steps` snapshots."""
    quantiles: tuple[float, ...] = _stats.DEFAULT_QUANTILES
    quantile_samples: int | None = 2048  # entries per snapshot the quantiles use (None: all, exact); the fits' entries
    top_k: int = 1                     # energy share of the top-k singular values
    fit_samples: int | None = 2048     # values per snapshot the fits use (None: all)
    fit_steps: int | None = 50         # snapshots fitted, evenly spaced with the first and last (None: all)
    families: tuple[str, ...] | None = None
    criterion: str = "bic"  # with thousands of values AIC lets nested families (t, gennorm) win by noise
    max_steps: int | None = 100        # snapshots used by the SVD-heavy geometry (None: all)
    thresholds: _health.Thresholds = field(default_factory=_health.Thresholds)
    workers: int = 2  # threads computing one module's independent parts at once (memory: one module's series)
    # Read the next module while analysing this one (memory: two modules' series). Off by default:
    # on a loaded 2-core machine it measured no faster with a cached file; it hides disk time.
    prefetch: bool = False


def _role(name: str, layer: int | None) -> str:
    """The module's job inside its block: 'transformer.h.11.attn.c_attn' → 'attn.c_attn'."""
    if layer is not None:
        m = re.search(rf"(?:^|\.){int(layer)}\.(.+)$", name)
        if m:
            return m.group(1)
    return name.rsplit(".", 1)[-1]


def _evenly(T: int, max_steps: int | None) -> np.ndarray:
    """Up to max_steps snapshot indices spread over 0..T-1, always with the first and the last."""
    if max_steps is None or T <= max_steps:
        return np.arange(T)
    return np.unique(np.linspace(0, T - 1, max(2, max_steps)).round().astype(int))


def read_series(module, buffers: Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A module's whole A and B series as numpy arrays (one read of each). With `buffers`, a
    recording's series are read into one block of memory kept from the module before (float32,
    or float64 when stored so), A then B, so that it grows to the largest module's series and no
    further: the arrays are views that the next read overwrites. Fresh memory costs the kernel a
    page fault per 4 KiB, which measured 3-4x the read itself."""
    lazy = (module.A, module.B)
    if buffers is None or not all(hasattr(x, "read_into") for x in lazy):
        return np.asarray(module.A[:]), np.asarray(module.B[:])
    dtype = np.float64 if any(x.dtype == np.float64 for x in lazy) else np.float32
    sizes = [int(np.prod(x.shape)) for x in lazy]
    block = buffers("series", (sum(sizes),), dtype)
    A = lazy[0].read_into(block[:sizes[0]].reshape(lazy[0].shape))
    B = lazy[1].read_into(block[sizes[0]:].reshape(lazy[1].shape))
    return A, B


# Snapshots before its slice that a job cut along time reads: an update needs the snapshot
# before it, the cosine of two updates the one before that.
LOOKBACK = 2
# A slice shorter than this is not worth a task of its own.
_MIN_PIECE = 32


def _back(sl: slice, lookback: int = LOOKBACK) -> slice:
    """The slice widened by `lookback` snapshots to the left (as far as the series goes)."""
    return slice(max(0, sl.start - lookback), sl.stop)


@dataclass(frozen=True)
class _Job:
    """One computation over a module's series. `lookback` None: it is not cut along time (its
    result is not per snapshot, e.g. fits at evenly spaced steps); otherwise `run(sl)` returns
    per-snapshot results for the slice widened by `lookback` (arrays, or dicts and tuples of
    them), of which `keep` drops the widening."""
    run: Callable[[slice], object]
    lookback: int | None = None

    def slices(self, T: int, pieces: int) -> list[slice]:
        n = 1 if self.lookback is None else max(1, min(pieces, T // _MIN_PIECE))
        edges = np.linspace(0, T, n + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def keep(self, result, sl: slice):
        if self.lookback is None:
            return result
        return _rows(result, slice(sl.start - _back(sl, self.lookback).start, None))


def _rows(result, sl: slice):
    """The rows `sl` of every array of a (nested) per-snapshot result."""
    if isinstance(result, dict):
        return {k: _rows(v, sl) for k, v in result.items()}
    if isinstance(result, tuple):
        return tuple(_rows(v, sl) for v in result)
    return result[sl]


def _join(parts: list):
    """Per-snapshot results of consecutive slices joined into one along time."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {k: _join([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(_join([p[i] for p in parts]) for i in range(len(first)))
    return np.concatenate(parts)


class ModuleAnalysis:
    """One module of one run, read once; every derived series is computed at most once and shared
    by the tables that need it."""

    def __init__(self, run: str, name: str, module, steps: np.ndarray, options: Options,
                 grad_steps: np.ndarray | None = None, series: tuple[np.ndarray, np.ndarray] | None = None,
                 grad_micro_steps: np.ndarray | None = None, state_steps: np.ndarray | None = None) -> None:
        self.run, self.name, self.module, self.options = run, name, module, options
        # the step axes of the gradient and optimizer-state series (None: not recorded)
        as_axis = lambda a: None if a is None else np.asarray(a, dtype=np.int64)  # noqa: E731
        self.grad_steps, self.grad_micro_steps = as_axis(grad_steps), as_axis(grad_micro_steps)
        self.state_steps = as_axis(state_steps)
        self.A, self.B = series if series is not None else read_series(module)
        T = min(len(self.A), len(self.B))  # a file being written may be one snapshot ahead in A
        if T == 0:
            raise RecordingError(f"module {name!r} of run {run!r} holds no snapshots yet; wait for the first flush")
        self.A, self.B = self.A[:T], self.B[:T]
        self.steps = np.asarray(steps, dtype=np.int64)[:T]
        if len(self.steps) < T:
            raise RecordingError(
                f"run {run!r} lists {len(self.steps)} snapshot steps but module {name!r} holds {T} snapshots; "
                "the file is inconsistent, re-record it or report a bug"
            )
        self.layer = module.layer_index
        self.role = _role(name, self.layer)
        self.scaling = float(module.scaling)
        self.rank = int(module.rank)
        attrs = getattr(module, "attrs", {}) or {}
        self.a_trainable = bool(attrs.get("a_trainable", True))
        self.b_trainable = bool(attrs.get("b_trainable", True))

    def frame(self, matrix: str, columns: dict[str, np.ndarray], index: np.ndarray | None = None) -> pd.DataFrame:
        steps = self.steps if index is None else self.steps[index]
        n = len(steps)
        head = {"run": [self.run] * n, "module": [self.name] * n, "layer": [self.layer] * n,
                "role": [self.role] * n, "matrix": [matrix] * n, "step": steps}
        return pd.DataFrame({**head, **columns})

    def dense(self, matrix: str) -> np.ndarray:
        return {"A": self.A, "B": self.B}[matrix]

    # --- the computations, by name, so that a driver can run the independent ones at once ---

    def _jobs(self) -> dict[str, "_Job"]:
        """Every computation over this module's series, longest first. A job that can be cut
        along time gets a slice of snapshots and returns that slice's rows, reading `LOOKBACK`
        snapshots before it (updates and their cosines reach two snapshots back)."""
        o, A, B = self.options, self.A, self.B
        return {
            # singular values of A, B, ΔW and ΔW's dynamics share one pass over the pair
            "lowrank": _Job(lambda sl: _lowrank.lora_series(A[_back(sl)], B[_back(sl)], self.scaling, (A[0], B[0])),
                            LOOKBACK),
            "fits:B": _Job(lambda sl: self._fit("B")),
            "fits:A": _Job(lambda sl: self._fit("A")),
            "moments:B": _Job(lambda sl: _stats.moments(B[sl], o.quantiles, o.quantile_samples), 0),
            "dynamics:B": _Job(lambda sl: _stats.dynamics(B[_back(sl)], B[0]), LOOKBACK),
            "moments:A": _Job(lambda sl: _stats.moments(A[sl], o.quantiles, o.quantile_samples), 0),
            "dynamics:A": _Job(lambda sl: _stats.dynamics(A[_back(sl)], A[0]), LOOKBACK),
        }

    def _fit(self, matrix: str):
        # Fits cost ~1 ms per snapshot: evenly spaced snapshots keep a long run's 'uniform at
        # init -> Gaussian' story at a fraction of the cost; the rows say how many.
        o = self.options
        idx = _evenly(len(self.steps), o.fit_steps)
        return idx, _fits.fit_snapshots(self.dense(matrix)[idx], o.families, o.fit_samples, o.criterion)

    def precompute(self, parts: Iterable[str], pool: Executor | None, pieces: int = 1) -> None:
        """Runs the named computations ('fits', 'dynamics', 'lowrank', 'moments') on the pool's
        threads at once (numpy releases the GIL in its loops and BLAS calls), longest first, each
        cut along time into up to `pieces` slices so that no single computation is the tail that
        the other threads wait for; without a pool they run on first use, one by one."""
        if pool is None:
            return
        jobs = self._jobs()
        wanted = [k for k in jobs if k.split(":")[0] in set(parts) and k not in self._results]
        slices = {k: jobs[k].slices(len(self.steps), pieces) for k in wanted}
        futures = {k: [pool.submit(jobs[k].run, sl) for sl in slices[k]] for k in wanted}
        for k in wanted:
            self._results[k] = _join([jobs[k].keep(f.result(), sl) for f, sl in zip(futures[k], slices[k])])

    def result(self, key: str):
        if key not in self._results:
            job = self._jobs()[key]
            whole = slice(0, len(self.steps))
            self._results[key] = job.keep(job.run(whole), whole)
        return self._results[key]

    @cached_property
    def _results(self) -> dict[str, object]:
        return {}

    @cached_property
    def moments(self) -> dict[str, dict[str, np.ndarray]]:
        return {m: self.result(f"moments:{m}") for m in ("A", "B")}

    @cached_property
    def dynamics(self) -> dict[str, dict[str, np.ndarray]]:
        return {"A": self.result("dynamics:A"), "B": self.result("dynamics:B"), "dW": self.result("lowrank")[1]}

    @cached_property
    def singular_values(self) -> dict[str, np.ndarray]:
        return self.result("lowrank")[0]

    @cached_property
    def spectrum(self) -> dict[str, dict[str, np.ndarray]]:
        return {m: _spectra.spectrum_metrics(s, self.options.top_k) for m, s in self.singular_values.items()}

    def series(self) -> _health.ModuleSeries:
        metrics: dict[str, dict[str, np.ndarray]] = {}
        for m in ("A", "B"):
            mo = self.moments[m]
            metrics[m] = {"nonfinite": mo["nonfinite"],
                          "max_abs": np.maximum(np.abs(mo["min"]), np.abs(mo["max"])),
                          "frobenius": mo["frobenius"], **self.dynamics[m]}
        metrics["dW"] = {**self.dynamics["dW"], **self.spectrum["dW"]}
        return _health.ModuleSeries(self.name, self.rank, self.steps, metrics, self.a_trainable, self.b_trainable)


# --- per-module table builders ---------------------------------------------------------------

TableBuilder = Callable[[ModuleAnalysis], list[pd.DataFrame]]
TABLES: Registry[TableBuilder] = Registry("analysis table")
# The computations each table (and the health checks) reads, started together by `analyze`.
_NEEDS: dict[str, tuple[str, ...]] = {
    "stats": ("moments", "dynamics", "lowrank"),
    "spectra": ("lowrank",),
    "singular_values": ("lowrank",),
    "fits": ("fits",),
    "health": ("moments", "dynamics", "lowrank"),
}


@TABLES.register("stats")
def _stats_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    frames = []
    for m in ("A", "B"):
        mo = dict(ma.moments[m])
        status, nonfinite = mo.pop("status"), mo.pop("nonfinite")
        cols = {**mo, "spectral_norm": ma.spectrum[m]["spectral_norm"], **ma.dynamics[m],
                "nonfinite": nonfinite, "status": status}
        frames.append(ma.frame(m, cols))
    frames.extend(_gradient_frames(ma))
    frames.extend(_state_frames(ma))
    # ΔW's entries are never formed: its mean and norms come from the factors, the shape
    # statistics (skew, quantiles) would need the out×in product and are left out.
    dw = dict(ma.dynamics["dW"])
    bad = ~np.isfinite(dw["frobenius"])
    frames.append(ma.frame("dW", {
        "mean": dw.pop("mean"), "frobenius": dw.pop("frobenius"),
        "spectral_norm": ma.spectrum["dW"]["spectral_norm"], **dw,
        "status": np.where(bad, "nonfinite", np.where(ma.spectrum["dW"]["spectral_norm"] == 0, "zero", "ok")),
    }))
    return [_with_micro_step(f) for f in frames]


def _micro_steps(values: np.ndarray | None, n: int) -> pd.arrays.IntegerArray:
    """`micro_step` as a nullable integer column: the recorded values, <NA> where there are none
    (rows of A, B, dW and state are per optimizer step and need no micro-step to be unique)."""
    out = pd.array([pd.NA] * n, dtype="Int64")
    if values is not None:
        k = min(n, len(values))
        out[:k] = values[:k]
    return out


def _with_micro_step(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `micro_step` key column right after `step` (<NA> if it had none), so that
    every stats frame has the same columns in the same order whichever comes first in the table."""
    if "micro_step" not in frame.columns:
        frame.insert(frame.columns.get_loc("step") + 1, "micro_step", _micro_steps(None, len(frame)))
    return frame


def _series_rows(ma: ModuleAnalysis, matrix: str, X: np.ndarray, steps: np.ndarray,
                 spectral: bool = True, extra: dict | None = None) -> pd.DataFrame:
    """The stats rows of a series X (n, m, k) on its own step axis: moments, quantiles,
    Frobenius norm and (with `spectral`) spectral norm, as for the gradients."""
    mo = _stats.moments(X, ma.options.quantiles, ma.options.quantile_samples)
    status, nonfinite = mo.pop("status"), mo.pop("nonfinite")
    spectral_norm = _spectra.singular_values(X).max(axis=1) if spectral else np.full(len(X), np.nan)
    head = {"run": ma.run, "module": ma.name, "layer": ma.layer, "role": ma.role, "matrix": matrix,
            "step": steps, **(extra or {})}
    return pd.DataFrame({**head, **mo, "spectral_norm": spectral_norm, "nonfinite": nonfinite, "status": status})


def _gradient_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Moments and norms of recorded gradients (matrix 'grad_A', 'grad_B'), on their own step
    axis (/grad_snapshots: per micro-step or per optimizer step), read one series at a time.
    With gradient accumulation several rows share a `step`; `micro_step` tells them apart."""
    frames = []
    micro = ma.grad_micro_steps
    for g in ("grad_A", "grad_B"):
        series = getattr(ma.module, g, None)
        if series is None or ma.grad_steps is None or len(series) == 0:
            continue
        X = np.asarray(series[:])
        n = min(len(X), len(ma.grad_steps))
        frames.append(_series_rows(ma, g, X[:n], ma.grad_steps[:n],
                                   extra={"micro_step": _micro_steps(micro, n)}))
        del X
    return frames


# How an optimizer-state entry is analysed, by its shape per snapshot. An entry shaped like its
# parameter (AdamW's exp_avg, exp_avg_sq) is a matrix like A or B. A 1-D entry (Adafactor's and
# CAME's factored exp_avg_sq_row/_col) still has a distribution, so it gets moments as a 1×n
# matrix, but no spectral norm: a vector's would only repeat its Frobenius norm. Any other shape
# (a 0-d step counter is never stored; a factored tensor of another rank) is skipped.
_STATE_SHAPES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], bool]] = {
    "matrix": (lambda X: X, True),
    "vector": (lambda X: X[:, None, :], False),
}


def _state_shape(shape: tuple[int, ...], param_shape: tuple[int, ...]) -> str | None:
    if shape == param_shape:
        return "matrix"
    return "vector" if len(shape) == 1 else None


def _state_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    """Moments and norms of recorded optimizer state (matrix 'state_A.<key>', 'state_B.<key>',
    <key> the optimizer's own name, e.g. 'state_B.exp_avg_sq'), on the state's step axis
    (/state_snapshots), reading one state series at a time."""
    steps = ma.state_steps
    if steps is None:
        return []
    frames = []
    for m, param_shape in (("A", ma.A.shape[1:]), ("B", ma.B.shape[1:])):
        for key, series in sorted((getattr(ma.module, f"state_{m}", None) or {}).items()):
            kind = _state_shape(tuple(series.shape[1:]), tuple(param_shape))
            n = min(len(series), len(steps))
            if kind is None or n == 0:
                continue
            as_stack, spectral = _STATE_SHAPES[kind]
            X = as_stack(np.asarray(series[:n]))
            frames.append(_series_rows(ma, f"state_{m}.{key}", X, steps[:n], spectral))
            del X
    return frames


@TABLES.register("spectra")
def _spectra_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    return [ma.frame(m, dict(ma.spectrum[m])) for m in ("A", "B", "dW")]


@TABLES.register("singular_values")
def _sv_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    frames = []
    for m, s in ma.singular_values.items():
        T, k = s.shape
        f = ma.frame(m, {}).loc[np.repeat(np.arange(T), k)].reset_index(drop=True)
        f["index"] = np.tile(np.arange(1, k + 1), T)
        f["value"] = s.reshape(-1)
        frames.append(f)
    return frames


@TABLES.register("fits")
def _fit_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    frames = []
    for m in ("A", "B"):
        idx, r = ma.result(f"fits:{m}")
        for fam, vals in r.families.items():
            f = ma.frame(m, {
                "family": fam,
                "loc": vals["loc"], "scale": vals["scale"],
                "shape": vals.get("df", vals.get("beta", np.full(len(idx), np.nan))),
                "ks": vals["ks"], "loglik": vals["loglik"], "aic": vals["aic"], "bic": vals["bic"],
                "n": r.n, "status": r.status, "best": r.best == fam, "best_family": r.best,
                "fitted_steps": len(idx), "recorded_steps": len(ma.steps),
            }, idx)
            frames.append(f)
    return frames


@TABLES.register("geometry")
def _geometry_frames(ma: ModuleAnalysis) -> list[pd.DataFrame]:
    W0 = getattr(ma.module, "W0", None)
    if W0 is None:
        return []
    W0 = np.asarray(W0, dtype=np.float64)
    idx = _evenly(len(ma.steps), ma.options.max_steps)
    A, B = ma.A[idx].astype(np.float64), ma.B[idx].astype(np.float64)
    ok = np.isfinite(A).all(axis=(1, 2)) & np.isfinite(B).all(axis=(1, 2))
    cols = {k: np.full(len(idx), np.nan) for k in ("w0_projection", "amplification", "dora_magnitude", "dora_direction")}
    if ok.any():
        U, S, V = _spectra.delta_w_svd(A[ok], B[ok], ma.scaling)
        proj = _geo.w0_projection(W0, U, V, np.sqrt((S**2).sum(axis=1)))
        dora = _geo.dora_change(W0, A[ok], B[ok], ma.scaling)
        for k, v in {**proj, **dora}.items():
            cols[k][ok] = v
    return [ma.frame("dW", cols, idx)]


# --- the driver ------------------------------------------------------------------------------

@dataclass
class Analysis:
    tables: dict[str, pd.DataFrame]
    findings: list[_health.Finding]


def _as_list(recs) -> list:
    return list(recs) if isinstance(recs, (list, tuple)) else [recs]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=KEYS)
    return pd.concat(frames, ignore_index=True)


def analyze(
    recs,
    tables: Sequence[str] = ("stats",),
    options: Options | None = None,
    health: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> Analysis:
    """Builds the named per-module tables (see `TABLES.names()`) for one or more recordings and,
    with `health`, runs the health checks; `progress(done, total, label)` is called per module."""
    o = options or Options()
    builders = {name: TABLES.get(name) for name in tables}
    recs = _as_list(recs)
    total = sum(len(r.modules) for r in recs)
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in builders}
    done = 0
    parts = {p for t in [*builders, *(["health"] if health else [])] for p in _NEEDS.get(t, ())}
    if o.workers < 1:
        raise UsageError(f"workers must be at least 1, got {o.workers}")
    pool = ThreadPoolExecutor(o.workers) if o.workers > 1 else None
    reader = ThreadPoolExecutor(1) if o.prefetch else None
    try:
        # each run's findings: its loss first, then its modules in order
        per_run = [_loss_findings(rec) if health else [] for rec in recs]
        where = {id(rec): i for i, rec in enumerate(recs)}
        for rec, name, module, series in _prefetched(recs, reader):
            ma = ModuleAnalysis(rec.run_name, name, module, rec.steps, o, getattr(rec, "grad_steps", None), series,
                                getattr(rec, "grad_micro_steps", None), getattr(rec, "state_steps", None))
            ma.precompute(parts, pool, o.workers)
            done += _module_tables(ma, builders, frames, per_run[where[id(rec)]], health, o)
            del ma, series  # release this module's series before reading the one after the next
            if progress is not None:
                progress(done, total, f"{rec.run_name}:{name}")
    finally:
        for p in (pool, reader):
            if p is not None:
                p.shutdown()
    findings = [f for run_findings in per_run for f in run_findings]
    return Analysis({t: _concat(f) for t, f in frames.items()}, findings)


def _prefetched(recs: list, reader: Executor | None):
    """(recording, name, module, (A, B)) for every module of every recording, in order, read into
    memory reused from module to module (the caller drops a module before asking for the next).
    With a reader thread, the next module's series is read into a second set of buffers while
    the caller analyses this one: a cold file's disk time then hides behind the computation, at
    the price of two modules' series in memory instead of one."""
    todo = [(rec, name, module) for rec in recs for name, module in rec.modules.items()]
    buffers = [Scratch(), Scratch()]
    if reader is None:
        for rec, name, module in todo:
            yield rec, name, module, read_series(module, buffers[0])
        return
    pending = reader.submit(read_series, todo[0][2], buffers[0]) if todo else None
    for i, (rec, name, module) in enumerate(todo):
        series = pending.result()
        if i + 1 < len(todo):  # into the buffers of module i - 1, which the caller has dropped
            pending = reader.submit(read_series, todo[i + 1][2], buffers[(i + 1) % 2])
        yield rec, name, module, series
        del series


def _module_tables(ma: ModuleAnalysis, builders: dict, frames: dict, findings: list, health: bool, o: Options) -> int:
    for tname, build in builders.items():
        frames[tname].extend(build(ma))
    if health:
        # the checks see one module; the run it came from is what tells several recordings apart
        findings.extend(replace(f, run=ma.run) for f in _health.check_module(ma.series(), o.thresholds))
    return 1


def _loss_findings(rec) -> list[_health.Finding]:
    sc = getattr(rec, "scalars", None)
    if sc is None:
        return []
    return [replace(f, run=rec.run_name) for f in _health.check_scalars(sc)]


def stats_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Moments, quantiles, norms, distance from the first snapshot, update size and cosine of
    consecutive updates for A, B and ΔW of every module and snapshot."""
    return analyze(recs, ("stats",), options, health=False).tables["stats"]


def spectra_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Spectral norm, smallest singular value, effective and stable rank, top-k energy share and
    condition number of A, B and ΔW per snapshot."""
    return analyze(recs, ("spectra",), options, health=False).tables["spectra"]


def singular_values_table(recs, options: Options | None = None) -> pd.DataFrame:
    """Every singular value of A, B and ΔW per snapshot, long form (`index` 1 = largest)."""
    return analyze(recs, ("singular_values",), options, health=False).tables["singular_values"]


def fits_table(recs, options: Options | None = None) -> pd.DataFrame:
    """One row per family per snapshot of A and B: loc, scale, shape (t's df, gennorm's β), KS,
    log-likelihood, AIC, BIC, and whether it is the best family of that snapshot."""
    return analyze(recs, ("fits",), options, health=False).tables["fits"]


def geometry_table(recs, options: Options | None = None) -> pd.DataFrame:
    """For modules whose W0 was recorded: ‖UᵀW0V‖_F of ΔW's top-r directions, the amplification
    factor and DoRA's magnitude/direction change, at up to `options.max_steps` snapshots."""
    return analyze(recs, ("geometry",), options, health=False).tables["geometry"]


def health_findings(recs, options: Options | None = None) -> list[_health.Finding]:
    """Every health finding of the recordings, run-level (loss) first, then per module."""
    return analyze(recs, (), options, health=True).findings


def best_family_changes(fits: pd.DataFrame) -> pd.DataFrame:
    """From a fits table: the steps at which the best family of a (run, module, matrix) changes,
    with columns run, module, layer, role, matrix, step, before, after."""
    rows = []
    best = fits[fits["family"] == fits["family"].iloc[0]] if len(fits) else fits
    for key, g in best.groupby(["run", "module", "matrix"], sort=False):
        g = g.sort_values("step")
        for step, before, after in _fits.best_family_changes(g["step"].to_numpy(), g["best_family"].to_numpy()):
            rows.append({"run": key[0], "module": key[1], "layer": g["layer"].iloc[0], "role": g["role"].iloc[0],
                         "matrix": key[2], "step": step, "before": before, "after": after})
    return pd.DataFrame(rows, columns=[*KEYS, "before", "after"])


# --- tables over several runs ----------------------------------------------------------------

def _common_modules(recs: list) -> list[str]:
    names = [n for n in recs[0].modules if all(n in r.modules for r in recs[1:])]
    if len(recs) > 1 and not names:
        raise UsageError(
            "the recordings have no module in common, so they cannot be compared; "
            f"{recs[0].run_name} has e.g. {', '.join(list(recs[0].modules)[:3])}"
        )
    return names


def similarity_table(recs, options: Options | None = None) -> pd.DataFrame:
    """The LoRA paper's subspace similarity φ (§7; right-singular vectors of A, left-singular of
    B) for i = j = 1 and i = j = rank: each snapshot against its run's last snapshot
    (`reference` 'final'), and every pair of runs at their last snapshots ('run'), each row with
    the random baseline max(i, j)/d. An all-zero matrix (B at init, a B that never trains) spans
    no subspace: its φ is NaN with `status` 'zero', or 'zero_reference' where the snapshot it is
    compared with is the zero one; no other snapshot stands in for a zero reference."""
    o = options or Options()
    recs = _as_list(recs)
    rows: list[pd.DataFrame] = []
    for name in _common_modules(recs):
        finals = {}
        for rec in recs:
            m = rec.modules[name]
            T = min(len(rec.steps), m.A.shape[0], m.B.shape[0])
            idx = _evenly(T, o.max_steps)
            dense = {"A": np.asarray(m.A[idx]), "B": np.asarray(m.B[idx])}
            layer = m.layer_index
            for matrix, X in dense.items():
                ok = np.isfinite(X).all(axis=(1, 2))
                if not ok[-1]:
                    continue  # the last snapshot is the reference; without it there is nothing to compare
                # the SVD of a zero matrix returns some basis, so φ against it would be a made-up number
                zero = ~X[ok].any(axis=(1, 2))
                status = np.where(zero, "zero", "zero_reference" if zero[-1] else "ok")
                U = _geo.subspace_basis(X[ok], matrix)
                finals[(rec.run_name, matrix)] = (U[-1], int(rec.steps[idx][ok][-1]), layer, bool(zero[-1]))
                for i in sorted({1, U.shape[-1]}):
                    rows.append(pd.DataFrame({
                        "run": rec.run_name, "module": name, "layer": layer, "role": _role(name, layer),
                        "matrix": matrix, "step": rec.steps[idx][ok], "reference": "final",
                        "other_run": rec.run_name, "other_step": int(rec.steps[idx][ok][-1]), "i": i, "j": i,
                        "phi": np.where(status == "ok", _geo.subspace_similarity(U, U[-1], i, i), np.nan),
                        "baseline": _geo.random_baseline(U.shape[-2], i, i), "status": status,
                    }))
        for a in range(len(recs)):
            for b in range(a + 1, len(recs)):
                for matrix in ("A", "B"):
                    ka, kb = (recs[a].run_name, matrix), (recs[b].run_name, matrix)
                    if ka not in finals or kb not in finals:
                        continue
                    (U1, s1, layer, zero1), (U2, s2, _, zero2) = finals[ka], finals[kb]
                    if U1.shape[0] != U2.shape[0]:
                        continue
                    status = "zero" if zero1 else "zero_reference" if zero2 else "ok"
                    for i, j in sorted({(1, 1), (U1.shape[1], U2.shape[1])}):
                        phi = _geo.subspace_similarity(U1, U2, i, j) if status == "ok" else np.nan
                        rows.append(pd.DataFrame({
                            "run": [ka[0]], "module": name, "layer": layer, "role": _role(name, layer),
                            "matrix": matrix, "step": s1, "reference": "run", "other_run": kb[0],
                            "other_step": s2, "i": i, "j": j, "phi": phi,
                            "baseline": _geo.random_baseline(U1.shape[0], i, j), "status": status,
                        }))
    cols = [*KEYS, "reference", "other_run", "other_step", "i", "j", "phi", "baseline", "status"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def histogram_table(recs, bins: int = 64, options: Options | None = None) -> pd.DataFrame:
    """Histograms of A and B on bin edges shared by every run and snapshot of a module (so they
    overlay and subtract), at up to `options.max_steps` snapshots; long form with bin edges
    `left`, `right` and `count`, plus `outside` (NaN/Inf values, never silently dropped)."""
    o = options or Options()
    recs = _as_list(recs)
    frames = []
    for name in _common_modules(recs):
        for matrix in ("A", "B"):
            def series(rec):
                m = rec.modules[name]
                T = min(len(rec.steps), getattr(m, matrix).shape[0])
                idx = _evenly(T, o.max_steps)
                return idx, np.asarray(getattr(m, matrix)[idx])
            ranges = [_stats.value_range(series(rec)[1]) for rec in recs]  # pass 1: the common range
            if all(r is None for r in ranges):
                continue
            edges = _stats.shared_edges(ranges, bins)
            for rec in recs:  # pass 2: counts, one run's series in memory at a time
                idx, X = series(rec)
                h = _stats.histogram_counts(X, edges)
                T = len(idx)
                layer = rec.modules[name].layer_index
                frames.append(pd.DataFrame({
                    "run": rec.run_name, "module": name, "layer": layer, "role": _role(name, layer),
                    "matrix": matrix, "step": np.repeat(rec.steps[idx], bins),
                    "bin": np.tile(np.arange(bins), T), "left": np.tile(edges[:-1], T),
                    "right": np.tile(edges[1:], T), "count": h.counts.reshape(-1),
                    "outside": np.repeat(h.outside, bins),
                }))
    cols = [*KEYS, "bin", "left", "right", "count", "outside"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
