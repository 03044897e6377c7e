"""The tables that compare the runs of one module, registered in `lorascope.analysis.TABLES`:
`similarity` (subspace φ against the run's last snapshot and between runs), `histograms` (bins
shared by every run and snapshot of a module) and `step_histograms` (bins shared by the runs at
each of a few chosen steps). They are built for the modules every run has, from each run's
series while it is in memory, so a module is read once for every table."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lorascope.analysis import TABLES
from lorascope.analysis import geometry as _geo
from lorascope.analysis import stats as _stats
from lorascope.analysis.builders import AcrossRuns, Rows, evenly_spaced
from lorascope.analysis.module import ModuleAnalysis
from lorascope.analysis.options import KEYS, Options
from lorascope.analysis.selection import nearest

__all__ = ["SIMILARITY_COLUMNS", "HISTOGRAM_COLUMNS", "STEP_HISTOGRAM_COLUMNS"]

SIMILARITY_COLUMNS = (*KEYS, "reference", "other_run", "other_step", "i", "j", "phi", "baseline", "status")
HISTOGRAM_COLUMNS = (*KEYS, "bin", "left", "right", "count", "outside")
STEP_HISTOGRAM_COLUMNS = (*KEYS, "at_step", "bin", "left", "right", "count", "outside")
MATRICES = ("A", "B")


@dataclass
class _Final:
    """A run's last finite snapshot of A or B: its subspace and where it came from."""
    basis: np.ndarray  # (d, r)
    step: int
    layer: int | None
    role: str
    zero: bool


class _SimilarityRows(Rows):
    """The LoRA paper's subspace similarity φ (§7; right-singular vectors of A, left-singular of
    B) for i = j = 1 and i = j = rank: each snapshot against its run's last snapshot (`reference`
    'final'), and every pair of runs at their last snapshots ('run'), each row with the random
    baseline max(i, j)/d. An all-zero matrix (B at init, a B that never trains) spans no
    subspace: its φ is NaN with `status` 'zero', or 'zero_reference' where the snapshot it is
    compared with is the zero one; no other snapshot stands in for a zero reference."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.finals: dict[tuple[str, str], _Final] = {}
        self.runs: list[str] = []
        self.name = ""  # the module, from the runs added

    def add(self, ma: ModuleAnalysis) -> list[pd.DataFrame]:
        idx = ma.evenly(self.options.max_steps)
        steps = ma.steps[idx]
        self.runs.append(ma.run)
        rows = []
        for matrix in MATRICES:
            X = ma.dense(matrix)[idx]
            ok = np.isfinite(X).all(axis=(1, 2))
            if not ok[-1]:
                continue  # the last snapshot is the reference; without it there is nothing to compare
            # the SVD of a zero matrix returns some basis, so φ against it would be a made-up number
            zero = ~X[ok].any(axis=(1, 2))
            status = np.where(zero, "zero", "zero_reference" if zero[-1] else "ok")
            U = _geo.subspace_basis(X[ok], matrix)
            last = int(steps[ok][-1])
            self.finals[(ma.run, matrix)] = _Final(U[-1], last, ma.layer, ma.role, bool(zero[-1]))
            for i in sorted({1, U.shape[-1]}):
                rows.append(pd.DataFrame({
                    "run": ma.run, "module": ma.name, "layer": ma.layer, "role": ma.role,
                    "matrix": matrix, "step": steps[ok], "reference": "final",
                    "other_run": ma.run, "other_step": last, "i": i, "j": i,
                    "phi": np.where(status == "ok", _geo.subspace_similarity(U, U[-1], i, i), np.nan),
                    "baseline": _geo.random_baseline(U.shape[-2], i, i), "status": status,
                }))
        self.name = ma.name
        return rows

    def finish(self) -> list[pd.DataFrame]:
        rows = []
        for a, run_a in enumerate(self.runs):
            for run_b in self.runs[a + 1:]:
                for matrix in MATRICES:
                    one, two = self.finals.get((run_a, matrix)), self.finals.get((run_b, matrix))
                    if one is None or two is None or one.basis.shape[0] != two.basis.shape[0]:
                        continue
                    status = "zero" if one.zero else "zero_reference" if two.zero else "ok"
                    for i, j in sorted({(1, 1), (one.basis.shape[1], two.basis.shape[1])}):
                        phi = _geo.subspace_similarity(one.basis, two.basis, i, j) if status == "ok" else np.nan
                        rows.append(pd.DataFrame({
                            "run": [run_a], "module": self.name, "layer": one.layer, "role": one.role,
                            "matrix": matrix, "step": one.step, "reference": "run", "other_run": run_b,
                            "other_step": two.step, "i": i, "j": j, "phi": phi,
                            "baseline": _geo.random_baseline(one.basis.shape[0], i, j), "status": status,
                        }))
        return rows


# A module's sampled snapshots are kept in memory for the second pass of the histograms (the
# bins need every run's range first) while all runs together stay below this; beyond it, each
# run's snapshots are read again from its recording, one run at a time.
KEEP_BYTES = 256 * 2**20


@dataclass
class _Sampled:
    """One run's snapshots of A or B that histograms count, and where to find them again."""
    run: str
    layer: int | None
    role: str
    steps: np.ndarray
    value_range: tuple[float, float] | None
    values: np.ndarray | None  # kept, or None: read again from `source` at `index`
    source: object
    index: np.ndarray

    def read(self) -> np.ndarray:
        return self.values if self.values is not None else np.asarray(self.source[self.index])


def _sampled(ma: ModuleAnalysis, matrix: str, idx: np.ndarray, keep: bool) -> _Sampled:
    X = ma.dense(matrix)[idx]
    return _Sampled(ma.run, ma.layer, ma.role, ma.steps[idx], _stats.value_range(X),
                    np.array(X) if keep else None, getattr(ma.module, matrix), ma.index[idx])


def _counts(name: str, s: _Sampled, matrix: str, edges: np.ndarray, X: np.ndarray, steps: np.ndarray,
            extra: dict | None = None) -> dict[str, np.ndarray]:
    """Long-form counts of the snapshots X (at `steps`) of one run on the given edges, as columns."""
    h = _stats.histogram_counts(X, edges)
    bins, T = len(edges) - 1, len(X)
    n = bins * T
    return {
        "run": np.full(n, s.run), "module": np.full(n, name), "layer": np.full(n, s.layer),
        "role": np.full(n, s.role), "matrix": np.full(n, matrix), "step": np.repeat(steps, bins),
        **{k: np.full(n, v) for k, v in (extra or {}).items()},
        "bin": np.tile(np.arange(bins), T), "left": np.tile(edges[:-1], T),
        "right": np.tile(edges[1:], T), "count": h.counts.reshape(-1),
        "outside": np.repeat(h.outside, bins),
    }


class _HistogramRows(Rows):
    """Histograms of A and B on bin edges shared by every run and snapshot of a module (so they
    overlay and subtract), at up to `max_steps` snapshots; long form with bin edges `left`,
    `right` and `count`, plus `outside` (NaN/Inf values, never silently dropped)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.sampled: dict[str, list[_Sampled]] = {m: [] for m in MATRICES}
        self.kept = 0
        self.name = ""

    def add(self, ma: ModuleAnalysis) -> list[pd.DataFrame]:
        idx = ma.evenly(self.options.max_steps)
        self.name = ma.name
        for matrix in MATRICES:
            size = ma.dense(matrix)[idx].nbytes
            keep = self.kept + size <= KEEP_BYTES
            self.kept += size if keep else 0
            self.sampled[matrix].append(_sampled(ma, matrix, idx, keep))
        return []

    def finish(self) -> list[pd.DataFrame]:
        frames = []
        for matrix in MATRICES:
            runs = self.sampled[matrix]
            ranges = [s.value_range for s in runs]
            if all(r is None for r in ranges):
                continue
            edges = _stats.shared_edges(ranges, self.options.bins)
            for s in runs:  # one run's snapshots in memory at a time
                frames.append(pd.DataFrame(_counts(self.name, s, matrix, edges, s.read(), s.steps)))
        return frames


class _StepHistogramRows(Rows):
    """Histograms of A and B at chosen steps (`Options.histogram_steps`; by default the first
    run's first and last step), each run at its snapshot nearest to a step, on bins shared by the
    runs at that step only: an early, narrow distribution keeps its resolution where the
    `histograms` table's bins, shared over all steps, would put it in a few of them. `at_step` is
    the step asked for, `step` the snapshot's."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.targets: list[int] | None = list(dict.fromkeys(options.histogram_steps)) or None
        self.sampled: dict[str, list[_Sampled]] = {m: [] for m in MATRICES}
        self.name = ""

    def add(self, ma: ModuleAnalysis) -> list[pd.DataFrame]:
        if self.targets is None:
            self.targets = [int(ma.steps[0]), int(ma.steps[-1])]
        # nearest among the snapshots in memory: they hold the sample's nearest to each step
        idx = nearest(ma.steps, self.targets)
        self.name = ma.name
        for matrix in MATRICES:
            self.sampled[matrix].append(_sampled(ma, matrix, idx, keep=True))
        return []

    def finish(self) -> list[pd.DataFrame]:
        frames = []
        for matrix in MATRICES:
            runs, parts = self.sampled[matrix], []
            for k, target in enumerate(self.targets or []):
                ranges = [_stats.value_range(s.values[k]) for s in runs]
                if all(r is None for r in ranges):
                    continue  # nothing finite at this step in any run: no bins to share
                edges = _stats.shared_edges(ranges, self.options.bins)
                parts.extend(_counts(self.name, s, matrix, edges, s.values[k:k + 1], s.steps[k:k + 1],
                                     {"at_step": target}) for s in runs)
            if parts:  # one frame per matrix: a frame per step and run cost more than the counts
                frames.append(pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in parts[0]}))
        return frames


def _histogram_steps(steps: np.ndarray, o: Options) -> np.ndarray | None:
    """`step_histograms` reads the sample's snapshots nearest its steps (the first and last
    snapshot when none are given)."""
    if not o.histogram_steps:
        return np.unique([0, len(steps) - 1])
    return np.unique(nearest(steps, o.histogram_steps))


TABLES.register("similarity")(AcrossRuns(_SimilarityRows, SIMILARITY_COLUMNS, evenly_spaced(lambda o: o.max_steps)))
TABLES.register("histograms")(AcrossRuns(_HistogramRows, HISTOGRAM_COLUMNS, evenly_spaced(lambda o: o.max_steps)))
TABLES.register("step_histograms")(AcrossRuns(_StepHistogramRows, STEP_HISTOGRAM_COLUMNS, _histogram_steps))
