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
HISTOGRAM_COLUMNS = (*KEYS, "bin", "left", "right", "count", "outside", "shared")
STEP_HISTOGRAM_COLUMNS = (*KEYS, "at_step", "bin", "left", "right", "count", "outside", "shared")
MATRICES = ("A", "B")


@dataclass
class _Final:
    """A run's last finite snapshot of A or B: its subspace (with its numerical rank) and where it
    came from."""
    subspace: _geo.Subspaces  # one snapshot: basis (d, r), rank ()
    step: int
    layer: int | None
    role: str


class _SimilarityRows(Rows):
    """The LoRA paper's subspace similarity φ (§7; right-singular vectors of A, left-singular of
    B) for i = j = 1 and i = j = rank: each snapshot against its run's last snapshot (`reference`
    'final'), and every pair of runs at their last snapshots ('run'), each row with the random
    baseline max(i, j)/d. Only a factor's numerically non-null directions count
    (`geometry.subspaces`: rank with tolerance max(m, n)·eps·σ_max, eps the recorded
    precision's): where i exceeds a snapshot's numerical rank or j the reference's, φ is NaN with
    `status` 'rank_deficient', since the basis beyond the rank is an arbitrary completion; an
    all-zero matrix (B at init, a B that never trains) is 'zero', or 'zero_reference' where the
    snapshot it is compared with is the zero one (`geometry.similarity_status`)."""

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
            S = _geo.subspaces(X[ok], matrix)
            last = int(steps[ok][-1])
            self.finals[(ma.run, matrix)] = _Final(S[-1], last, ma.layer, ma.role)
            for i in sorted({1, S.basis.shape[-1]}):
                phi, status = _geo.similarity(S, S[-1], i, i)
                rows.append(pd.DataFrame({
                    "run": ma.run, "module": ma.name, "layer": ma.layer, "role": ma.role,
                    "matrix": matrix, "step": steps[ok], "reference": "final",
                    "other_run": ma.run, "other_step": last, "i": i, "j": i, "phi": phi,
                    "baseline": _geo.random_baseline(S.basis.shape[-2], i, i), "status": status,
                }))
        self.name = ma.name
        return rows

    def finish(self) -> list[pd.DataFrame]:
        rows = []
        for a, run_a in enumerate(self.runs):
            for run_b in self.runs[a + 1:]:
                for matrix in MATRICES:
                    one, two = self.finals.get((run_a, matrix)), self.finals.get((run_b, matrix))
                    if one is None or two is None or one.subspace.basis.shape[0] != two.subspace.basis.shape[0]:
                        continue
                    d, r1, r2 = one.subspace.basis.shape[0], one.subspace.basis.shape[1], two.subspace.basis.shape[1]
                    for i, j in sorted({(1, 1), (r1, r2)}):
                        phi, status = _geo.similarity(one.subspace, two.subspace, i, j)
                        rows.append(pd.DataFrame({
                            "run": [run_a], "module": self.name, "layer": one.layer, "role": one.role,
                            "matrix": matrix, "step": one.step, "reference": "run", "other_run": run_b,
                            "other_step": two.step, "i": i, "j": j, "phi": float(phi),
                            "baseline": _geo.random_baseline(d, i, j), "status": status.item(),
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


def _counts(name: str, s: _Sampled, matrix: str, edges: np.ndarray, shared: bool, X: np.ndarray,
            steps: np.ndarray, extra: dict | None = None) -> dict[str, np.ndarray]:
    """Long-form counts of the snapshots X (at `steps`) of one run on the given edges, as columns;
    `shared`: whether the other runs have the same edges."""
    h = _stats.histogram_counts(X, edges)
    bins, T = len(edges) - 1, len(X)
    n = bins * T
    return {
        "run": np.full(n, s.run), "module": np.full(n, name), "layer": np.full(n, s.layer),
        "role": np.full(n, s.role), "matrix": np.full(n, matrix), "step": np.repeat(steps, bins),
        **{k: np.full(n, v) for k, v in (extra or {}).items()},
        "bin": np.tile(np.arange(bins), T), "left": np.tile(edges[:-1], T),
        "right": np.tile(edges[1:], T), "count": h.counts.reshape(-1),
        "outside": np.repeat(h.outside, bins), "shared": np.full(n, shared),
    }


class _HistogramRows(Rows):
    """Histograms of A and B on bin edges shared by every run and snapshot of a module (so they
    overlay and subtract), at up to `max_steps` snapshots; long form with bin edges `left`,
    `right` and `count`, plus `outside` (NaN/Inf values, never silently dropped). Where the runs'
    scales differ by more than `stats.SCALE_RATIO`, each run gets bins of its own over all its
    snapshots instead (`shared` False), so that each stays readable."""

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
            edges, shared = _stats.run_edges(ranges, self.options.bins)
            for s, e in zip(runs, edges):  # one run's snapshots in memory at a time
                frames.append(pd.DataFrame(_counts(self.name, s, matrix, e, shared, s.read(), s.steps)))
        return frames


class _StepHistogramRows(Rows):
    """Histograms of A and B at chosen steps (`Options.histogram_steps`; by default the first
    run's first and last step), each run at its snapshot nearest to a step, on bins shared by the
    runs at that step only: an early, narrow distribution keeps its resolution where the
    `histograms` table's bins, shared over all steps, would put it in a few of them. `at_step` is
    the step asked for, `step` the snapshot's. Where the runs' scales at a step differ by more than
    `stats.SCALE_RATIO`, each run gets bins of its own at that step (`shared` False)."""

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
                edges, shared = _stats.run_edges(ranges, self.options.bins)
                parts.extend(_counts(self.name, s, matrix, e, shared, s.values[k:k + 1], s.steps[k:k + 1],
                                     {"at_step": target}) for s, e in zip(runs, edges))
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
