"""One module of one run in memory (`ModuleAnalysis`): its A and B series, read once, and every
series derived from them, computed at most once and shared by the tables and the health checks
that need it. Its computations are `Job`s, so that the driver can run them on threads at once."""
from __future__ import annotations

from concurrent.futures import Executor
from functools import cached_property
from typing import TYPE_CHECKING, Iterable

import numpy as np

from lorascope.analysis import health as _health
from lorascope.analysis import lowrank as _lowrank
from lorascope.analysis import spectra as _spectra
from lorascope.analysis import stats as _stats
from lorascope.analysis.batch import Scratch
from lorascope.analysis.jobs import LOOKBACK, Job, back, join
from lorascope.analysis.options import Options
from lorascope.analysis.selection import evenly, role
from lorascope.errors import RecordingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ModuleAnalysis", "read_series", "HEALTH_NEEDS"]

# The computations the health checks (and the stats table) read.
HEALTH_NEEDS = ("moments", "dynamics", "lowrank")


def _series_dtype(lazy) -> np.dtype:
    return np.dtype(np.float64 if any(x.dtype == np.float64 for x in lazy) else np.float32)


def read_series(module, buffers: Scratch | None = None, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A module's A and B series as numpy arrays (one read of each): every snapshot, or those at
    `index` (increasing). With `buffers`, a recording's whole series are read into one block of
    memory kept from the module before (float32, or float64 when stored so), A then B, so that it
    grows to the largest module's series and no further: the arrays are views that the next read
    overwrites. Fresh memory costs the kernel a page fault per 4 KiB, which measured 3-4x the read
    itself. Snapshots at an index (a sample of a long series) come back in fresh arrays."""
    lazy = (module.A, module.B)
    if index is not None:
        dtype = _series_dtype(lazy)
        return tuple(np.asarray(x[index], dtype=dtype) for x in lazy)
    if buffers is None or not all(hasattr(x, "read_into") for x in lazy):
        return np.asarray(module.A[:]), np.asarray(module.B[:])
    dtype = _series_dtype(lazy)
    sizes = [int(np.prod(x.shape)) for x in lazy]
    block = buffers("series", (sum(sizes),), dtype)
    A = lazy[0].read_into(block[:sizes[0]].reshape(lazy[0].shape))
    B = lazy[1].read_into(block[sizes[0]:].reshape(lazy[1].shape))
    return A, B


def _axis(a) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.int64)


class ModuleAnalysis:
    """One module of one run, read once; every derived series is computed at most once and shared
    by the tables that need it.

    `index` says which of the recording's snapshots the series hold (None: all of them), `sample`
    which ones the analysis looks at (None: the same) and `recorded` how many the recording holds
    (None: the sample's count). A table that uses only some of the sample (fits, geometry,
    similarity) finds them with `evenly` and `held`, so that reading just those gives the numbers
    of reading the whole sample."""

    def __init__(self, run: str, name: str, module, steps: np.ndarray, options: Options,
                 grad_steps: np.ndarray | None = None, series: tuple[np.ndarray, np.ndarray] | None = None,
                 grad_micro_steps: np.ndarray | None = None, state_steps: np.ndarray | None = None,
                 index: np.ndarray | None = None, sample: np.ndarray | None = None,
                 recorded: int | None = None) -> None:
        self.run, self.name, self.module, self.options = run, name, module, options
        # the step axes of the gradient and optimizer-state series (None: not recorded)
        self.grad_steps, self.grad_micro_steps = _axis(grad_steps), _axis(grad_micro_steps)
        self.state_steps = _axis(state_steps)
        self.A, self.B = series if series is not None else read_series(module, index=index)
        T = min(len(self.A), len(self.B))  # a file being written may be one snapshot ahead in A
        if T == 0:
            raise RecordingError(f"module {name!r} of run {run!r} holds no snapshots yet; wait for the first flush")
        self.A, self.B = self.A[:T], self.B[:T]
        steps = np.asarray(steps, dtype=np.int64)
        self.index = np.arange(T) if index is None else np.asarray(index, dtype=np.int64)[:T]
        if len(steps) <= self.index[-1]:
            raise RecordingError(
                f"run {run!r} lists {len(steps)} snapshot steps but module {name!r} holds {self.index[-1] + 1} snapshots; "
                "the file is inconsistent, re-record it or report a bug"
            )
        self.sample = self.index if sample is None else np.asarray(sample, dtype=np.int64)
        self.recorded = len(self.sample) if recorded is None else int(recorded)  # snapshots in the recording
        self.steps = steps[self.index]
        self.layer = module.layer_index
        self.role = role(name, self.layer)
        self.scaling = float(module.scaling)
        self.rank = int(module.rank)
        attrs = getattr(module, "attrs", {}) or {}
        self.a_trainable = bool(attrs.get("a_trainable", True))
        self.b_trainable = bool(attrs.get("b_trainable", True))

    def held(self, picks: np.ndarray) -> np.ndarray:
        """Where in memory the sample's snapshots `picks` (positions in the sample) are."""
        return np.searchsorted(self.index, self.sample[picks])

    def evenly(self, limit: int | None) -> np.ndarray:
        """Up to `limit` snapshots of the sample, evenly spaced with its first and last, as
        positions in memory."""
        return self.held(evenly(len(self.sample), limit))

    def frame(self, matrix: str, columns: dict[str, np.ndarray], index: np.ndarray | None = None) -> pd.DataFrame:
        """Rows of one matrix at the snapshots in memory (or those at `index`): the key columns,
        then `columns`."""
        import pandas as pd

        steps = self.steps if index is None else self.steps[index]
        n = len(steps)
        head = {"run": [self.run] * n, "module": [self.name] * n, "layer": [self.layer] * n,
                "role": [self.role] * n, "matrix": [matrix] * n, "step": steps}
        return pd.DataFrame({**head, **columns})

    def dense(self, matrix: str) -> np.ndarray:
        return {"A": self.A, "B": self.B}[matrix]

    # --- the computations, by name, so that a driver can run the independent ones at once ---

    def _jobs(self) -> dict[str, Job]:
        """Every computation over this module's series, longest first. A job that can be cut
        along time gets a slice of snapshots and returns that slice's rows, reading `LOOKBACK`
        snapshots before it (updates and their cosines reach two snapshots back)."""
        o, A, B = self.options, self.A, self.B
        return {
            # singular values of A, B, ΔW and ΔW's dynamics share one pass over the pair
            "lowrank": Job(lambda sl: _lowrank.lora_series(A[back(sl)], B[back(sl)], self.scaling, (A[0], B[0])),
                           LOOKBACK),
            "fits:B": Job(lambda sl: self._fit("B")),
            "fits:A": Job(lambda sl: self._fit("A")),
            "moments:B": Job(lambda sl: _stats.moments(B[sl], o.quantiles, o.quantile_samples), 0),
            "dynamics:B": Job(lambda sl: _stats.dynamics(B[back(sl)], B[0]), LOOKBACK),
            "moments:A": Job(lambda sl: _stats.moments(A[sl], o.quantiles, o.quantile_samples), 0),
            "dynamics:A": Job(lambda sl: _stats.dynamics(A[back(sl)], A[0]), LOOKBACK),
        }

    def _fit(self, matrix: str):
        # Fits cost ~1 ms per snapshot: evenly spaced snapshots keep a long run's 'uniform at
        # init -> Gaussian' story at a fraction of the cost; the rows say how many. scipy comes
        # in here, only when something is fitted.
        from lorascope.analysis import fits as _fits

        o = self.options
        idx = self.evenly(o.fit_steps)
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
            self._results[k] = join([jobs[k].keep(f.result(), sl) for f, sl in zip(futures[k], slices[k])])

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
        """What the health checks read."""
        metrics: dict[str, dict[str, np.ndarray]] = {}
        for m in ("A", "B"):
            mo = self.moments[m]
            metrics[m] = {"nonfinite": mo["nonfinite"],
                          "max_abs": np.maximum(np.abs(mo["min"]), np.abs(mo["max"])),
                          "frobenius": mo["frobenius"], **self.dynamics[m]}
        metrics["dW"] = {**self.dynamics["dW"], **self.spectrum["dW"]}
        return _health.ModuleSeries(self.name, self.rank, self.steps, metrics, self.a_trainable, self.b_trainable)
